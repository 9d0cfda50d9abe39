"""Adversarial training (training/adversarial.py): the perturbation, the catastrophic-overfitting watch, a tiny run."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from detector.config import ModelConfig
from detector.networks import build_model
from dnd.training.adversarial import PIXEL, catastrophic_overfitting, perturb, robust_accuracy, step_size

from .conftest import write_image_folder


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
def test_perturbation_stays_in_the_ball_raises_the_loss_and_leaves_bn_and_weights_alone(
    decoupled: bool, steps: int
) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(decoupled=decoupled)).train()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    bn = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    adv = perturb(model, x, y, eps=8, steps=steps)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() <= 8 * PIXEL + 1e-6
    assert (adv - x).abs().max() > 4 * PIXEL  # it moved
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in bn.items()), "the attack updated BN statistics"
    assert all(p.grad is None for p in model.parameters()), "the attack left weight gradients behind"
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def test_default_steps_follow_the_papers() -> None:
    assert step_size(8, 1) == pytest.approx(10 * PIXEL)  # 1.25 eps (Wong et al.)
    assert step_size(8, 10) == pytest.approx(2 * PIXEL)  # 2.5 eps / k (Madry et al.)
    assert step_size(8, 1, alpha=4) == pytest.approx(4 * PIXEL)


def test_catastrophic_overfitting_is_a_collapse_from_the_best() -> None:
    hist = lambda *v: [{"test_robust_accuracy": a} for a in v]  # noqa: E731
    assert not catastrophic_overfitting(hist(0.2, 0.3, 0.35))
    assert not catastrophic_overfitting(hist(0.05, 0.06))  # never robust is not a collapse
    assert catastrophic_overfitting(hist(0.3, 0.35, 0.02))
    assert not catastrophic_overfitting([{"test_accuracy": 0.5}])


def test_robust_accuracy_is_at_most_clean_accuracy_and_zero_at_full_budget() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig()).eval()
    x, y = torch.rand(20, 3, 32, 32), torch.randint(0, 10, (20,))
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    assert robust_accuracy(model, x, y, eps=2, steps=3) <= clean
    assert robust_accuracy(model, x, y, eps=255, steps=5) == 0.0  # the whole box: any label can be reached
    assert not model.training


def test_adversarial_run_records_robust_accuracy(tmp_path: Path) -> None:
    from dnd.cli import main

    data = write_image_folder(tmp_path / "data", n_train=30, n_test=10)
    out = tmp_path / "robust"
    args = [
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--eval-limit",
        "50",
        "--adv-eps",
        "8",
        "--adv-eval-limit",
        "20",
    ]
    assert main(args) == 0
    hist = json.loads((out / "train_history.json").read_text())
    assert 0 <= hist[0]["test_robust_accuracy"] <= 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["adv_eps"] == 8 and cfg["adversarial"]["catastrophic_overfitting"] is False
    # offline distillation targets clean images: refused together with adversarial training, before any work
    assert (
        main([*args[:4], str(tmp_path / "other"), *args[5:], "--init", str(out), "--lambda-kd", "1", "--kd-offline"])
        == 2
    )


def test_robust_accuracy_is_watched_on_every_class(monkeypatch) -> None:
    """The test split may be sorted by class (image folders are): the watched sample must not be one class."""
    import dnd.training.adversarial as adv
    import dnd.training.train as tr
    from detector.data import Split
    from dnd.training.config import TrainConfig

    seen = {}
    monkeypatch.setattr(adv, "robust_accuracy", lambda model, x, y, eps, device: seen.setdefault("y", y) is None or 0.5)
    y = torch.arange(10).repeat_interleave(30)  # sorted by class, as an image folder loads
    test = Split(torch.zeros(300, 3, 32, 32, dtype=torch.uint8), y, tuple("abcdefghij"), "x")
    model = build_model(ModelConfig()).eval()
    tr.evaluate(model, test, torch.device("cpu"), TrainConfig(adv_eps=8, adv_eval_limit=50))
    assert torch.bincount(seen["y"], minlength=10).tolist() == [5] * 10
