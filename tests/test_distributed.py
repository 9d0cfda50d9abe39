"""`dnd train` under torchrun: 2 CPU processes (gloo) on a tiny image folder reach what one process reaches at the
same global batch (data order, augmentation and BatchNorm statistics are those of the global batch)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dnd.cli import main

from .conftest import write_image_folder

TINY = ["--batch-size", "64", "--eval-limit", "50", "--threads", "1", "--epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), n_train=30, n_test=10)


def torchrun(args: list[str]) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "dnd",
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def compare(one: Path, two: Path, gate_atol: float) -> None:
    a, b = load_file(str(one / "model.safetensors")), load_file(str(two / "model.safetensors"))
    assert set(a) == set(b)
    for k in a:  # float summation order only; Adam's normalised steps amplify it on near-zero gate gradients
        tol = gate_atol if ".gate." in k else 1e-3
        assert torch.allclose(a[k].float(), b[k].float(), atol=tol, rtol=1e-3), k
    ha, hb = (json.loads((d / "train_history.json").read_text())[-1] for d in (one, two))
    assert ha["train_ce"] == pytest.approx(hb["train_ce"], abs=1e-3)
    assert json.loads((two / "config.json").read_text())["processes"] == 2


@pytest.mark.slow  # torchrun's two processes on 2 cores: ~20 s
def test_two_processes_train_the_dense_network_as_one(data: Path, tmp_path: Path) -> None:
    args = ["train", "--data", str(data), "--lr", "0.02", *TINY]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun([*args, "--out", str(tmp_path / "two")])
    compare(tmp_path / "one", tmp_path / "two", gate_atol=0)
    assert not (tmp_path / "two" / "checkpoint" / ".state.json.tmp").exists()  # one writer


@pytest.mark.slow
def test_two_processes_fine_tune_the_gates_as_one(data: Path, tmp_path: Path) -> None:
    dense = tmp_path / "dense"
    assert main(["train", "--data", str(data), "--out", str(dense), "--lr", "0.02", *TINY]) == 0
    args = [
        "train",
        "--data",
        str(data),
        "--decouple",
        "--init",
        str(dense),
        "--hard-epochs",
        "1",
        "--lr",
        "0.01",
        *TINY,
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun([*args, "--out", str(tmp_path / "two")])
    compare(tmp_path / "one", tmp_path / "two", gate_atol=2e-2)


def test_the_global_batch_must_split_evenly(data: Path, tmp_path: Path) -> None:
    from dnd.training.config import TrainConfig
    from dnd.training.setup import check_request

    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        check_request(tmp_path / "x", TrainConfig(batch_size=63), False, None, False, world=2)


def test_attack_batches_shared_by_two_processes_give_one_process_images(data: Path, tmp_path: Path) -> None:
    """`dnd attack` (as `dnd profiles` and `dnd evaluate` run their attacks): each process attacks every other batch
    and process 0 writes the gathered set, bitwise the one process's."""
    from detector.attacks import load_attack_set

    from .conftest import RESNET20, write_detector_bundle

    bundle = write_detector_bundle(tmp_path / "b", **RESNET20)  # enough correctly classified images to share
    args = [
        "attack",
        "--model",
        str(bundle),
        "--data",
        str(data),
        "--attack",
        "fgsm,pgd",
        "--split",
        "calibration",
        "--threads",
        "1",
        "--batch-size",
        "2",
    ]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    torchrun([*args, "--out", str(tmp_path / "two")])
    for name in ("fgsm", "pgd"):
        a, b = (load_attack_set(tmp_path / d / f"{name}.safetensors") for d in ("one", "two"))
        assert len(a.y) >= 6 and torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_global_batch_norm_is_batch_norm_over_the_whole_batch(layout: torch.memory_format) -> None:
    """The CPU global-batch BatchNorm (training/distributed.py) in one process (the sum over processes is the
    identity): BatchNorm2d's training-mode output, gradients and running statistics, in float64."""
    from dnd.training.distributed import global_batch_norm

    torch.manual_seed(0)
    ref, mine = (torch.nn.BatchNorm2d(5).double() for _ in range(2))
    with torch.no_grad():
        for bn in (ref, mine):
            bn.weight.copy_(torch.linspace(0.5, 2, 5))
            bn.bias.copy_(torch.linspace(-1, 1, 5))
    x = (torch.randn(6, 5, 4, 3, dtype=torch.float64) * 3 + 1).contiguous(memory_format=layout)
    dy = torch.randn(6, 5, 4, 3, dtype=torch.float64)
    outs = []
    one_process = (lambda t: t[None], lambda t: t)  # gather and sum over one process
    for bn, fwd in ((ref, lambda x: ref(x)), (mine, lambda x: global_batch_norm(mine, x, *one_process))):
        xi = x.clone().requires_grad_()
        y = fwd(xi)
        (y * dy).sum().backward()
        outs.append((y, xi.grad, bn.weight.grad, bn.bias.grad, bn.running_mean, bn.running_var))
    for a, b in zip(*outs):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)


def test_global_batch_norm_takes_bf16_activations_as_batch_norm_does() -> None:
    """Under bf16 autocast the activations reach BatchNorm in bf16 with float32 parameters: the output and input
    gradient stay bf16 and agree with BatchNorm2d's to bf16 rounding."""
    from dnd.training.distributed import global_batch_norm

    torch.manual_seed(0)
    ref, mine = torch.nn.BatchNorm2d(8), torch.nn.BatchNorm2d(8)
    x = (torch.randn(16, 8, 6, 6) * 2 + 0.5).bfloat16().contiguous(memory_format=torch.channels_last)
    dy = torch.randn(16, 8, 6, 6).bfloat16()
    outs = []
    for fwd in (ref, lambda x: global_batch_norm(mine, x, lambda t: t[None], lambda t: t)):
        xi = x.clone().requires_grad_()
        y = fwd(xi)
        (y.float() * dy.float()).sum().backward()
        outs.append((y, xi.grad))
    (y0, g0), (y1, g1) = outs
    assert y1.dtype == g1.dtype == torch.bfloat16
    assert torch.allclose(y0.float(), y1.float(), atol=3e-2) and torch.allclose(g0.float(), g1.float(), atol=3e-2)
    assert torch.allclose(ref.running_var, mine.running_var, rtol=1e-3)
