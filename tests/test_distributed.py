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
    from training.config import TrainConfig
    from training.setup import check_request

    with pytest.raises(ValueError, match="multiple of the 2 processes"):
        check_request(tmp_path / "x", TrainConfig(batch_size=63), False, None, False, world=2)


def test_attack_batches_shared_by_two_processes_give_one_process_images(data: Path, tmp_path: Path) -> None:
    """`dnd attack` (as `dnd profiles` and `dnd evaluate` run their attacks): each process attacks every other batch
    and process 0 writes the gathered set, bitwise the one process's."""
    from detector.attacks import load_attack_set

    from .conftest import write_detector_bundle

    bundle = write_detector_bundle(tmp_path / "b")
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
