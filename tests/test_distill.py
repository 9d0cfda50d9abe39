"""Distillation (dnd/training/distill.py): the folded, optionally bf16 teacher and per-step or offline targets."""

import json
from pathlib import Path

import pytest
import torch

from .pipeline import TRAIN_TINY, dnd_train

TINY = TRAIN_TINY


def test_distillation_from_the_init_bundle(trained_dense: Path, tiny_data: Path, tmp_path: Path) -> None:
    from dnd.training.distill import distill_loss

    logits = torch.randn(4, 10)
    assert float(distill_loss(logits, logits, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(torch.zeros(4, 10), logits, 4.0)) > 0
    # the term reaches the update of a decoupled step (it once was computed, logged and then dropped from the loss)
    import copy

    from detector.config import ModelConfig
    from detector.losses import DecouplingLoss
    from detector.networks import build_model
    from dnd.training.config import TrainConfig
    from dnd.training.step import make_optimizers, train_step

    torch.manual_seed(0)
    base, teacher = build_model(ModelConfig(decoupled=True)), build_model(ModelConfig()).eval()
    xb, yb = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    after = []
    for lam in (0.0, 1.0):
        m, cfg = copy.deepcopy(base), TrainConfig(lambda_kd=lam)
        loss_mod = DecouplingLoss([u.cout for u in m.units()], 10)
        torch.manual_seed(1)
        train_step(m, loss_mod, make_optimizers(m, loss_mod, cfg), xb, yb, cfg, 0.0, 1, teacher if lam else None)
        after.append(m.fc.weight.detach().clone())
    assert not torch.allclose(after[0], after[1])
    out = tmp_path / "kd"
    dnd_train(
        tiny_data, out, "--decouple", "--init", str(trained_dense), "--epochs", "1", *TINY
    )  # distillation is on by default for --decouple
    hist = json.loads((out / "train_history.json").read_text())
    recorded = json.loads((out / "config.json").read_text())["train"]
    assert hist[0]["train_kd"] > 0 and recorded["lambda_kd"] == 1.0 and recorded["kd_teacher_bf16"] is True
    from dnd.training.config import make_config

    assert make_config(False, {}).lambda_kd == 0.0  # a dense run from scratch has no teacher


def test_bf16_teacher_gives_float32_logits_close_to_fp32() -> None:
    from detector.config import ModelConfig
    from detector.networks import build_model
    from dnd.training.distill import teacher_forward, teacher_logits

    torch.manual_seed(0)
    teacher, x = build_model(ModelConfig()).eval().requires_grad_(False), torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        ref, low = teacher_forward(teacher, x, bf16=False), teacher_forward(teacher, x, bf16=True)
    assert low.dtype == torch.float32 and low.shape == ref.shape == (16, 10)
    # bf16 keeps 8 mantissa bits: close to fp32, and not bit-identical (the autocast really ran)
    assert not torch.equal(low, ref) and torch.allclose(low, ref, atol=0.05 * float(ref.abs().max()))
    t = teacher_logits(teacher, x, bf16=True, batch_size=5)
    cl = x.contiguous(memory_format=torch.channels_last)  # as teacher_logits feeds it
    with torch.no_grad():
        expect = torch.cat([teacher_forward(teacher, cl[i : i + 5], True) for i in range(0, 16, 5)])
    assert t.dtype == torch.float32 and torch.equal(t[0], expect)


@pytest.mark.parametrize("decoupled", [False, True])
def test_frozen_teacher_folds_batchnorm_and_keeps_the_logits(decoupled: bool) -> None:
    import copy

    from detector.config import ModelConfig
    from detector.networks import build_model
    from dnd.training.distill import frozen_teacher

    torch.manual_seed(0)
    net = build_model(ModelConfig(decoupled=decoupled))
    net.train()
    with torch.no_grad():  # BN statistics and affine parameters away from their identity initialisation
        for _ in range(3):
            net(torch.rand(64, 3, 32, 32) * 2)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        ref = net.forward_paths(x)
        teacher = frozen_teacher(copy.deepcopy(net), torch.device("cpu"))
        got = teacher.forward_paths(x.contiguous(memory_format=torch.channels_last))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert torch.allclose(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(got.z, ref.z))  # the gates read the conv input: same paths


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("arch", ["vgg11", "tests.user_cnn:small_cnn"])
def test_frozen_teacher_folds_batchnorm_in_any_family(arch: str, decoupled: bool) -> None:
    """VGG and a user's CNN: the BatchNorms are found in the fx graph and folded, the logits and paths stay."""
    import copy

    from detector.config import ModelConfig
    from detector.networks import arch_config, build_model
    from dnd.training.distill import frozen_teacher

    torch.manual_seed(0)
    cfg = arch_config(arch)
    widths = (4, 8, 8, 16, 16) if arch == "vgg11" else cfg.widths
    net = build_model(ModelConfig.from_dict({**cfg.__dict__, "widths": widths, "decoupled": decoupled})).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(32, 3, 32, 32) * 2)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        ref = net.eval().forward_paths(x)
        teacher = frozen_teacher(copy.deepcopy(net), torch.device("cpu"))
        got = teacher.forward_paths(x.contiguous(memory_format=torch.channels_last))
    assert n_bn > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules())
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(got.z, ref.z))


def test_offline_distillation_targets_and_run(trained_dense: Path, tiny_data: Path, tmp_path: Path) -> None:
    from detector.config import ModelConfig
    from detector.networks import build_model
    from dnd.training.distill import teacher_logits

    torch.manual_seed(0)
    teacher, x = build_model(ModelConfig()).eval(), torch.rand(7, 3, 32, 32)
    t = teacher_logits(teacher, x, batch_size=3)  # ragged last batch
    assert t.shape == (2, 7, 10) and not t.requires_grad
    with torch.no_grad():
        assert torch.allclose(t[0], teacher(x), atol=1e-5) and torch.allclose(t[1], teacher(x.flip(3)), atol=1e-5)
    out = tmp_path / "kd-offline"
    dnd_train(tiny_data, out, "--decouple", "--init", str(trained_dense), "--epochs", "1", "--kd-offline", *TINY)
    hist = json.loads((out / "train_history.json").read_text())
    assert hist[0]["train_kd"] > 0 and json.loads((out / "config.json").read_text())["train"]["kd_offline"] is True
    from dnd.training.config import make_config

    assert make_config(True, {}).kd_offline is False
