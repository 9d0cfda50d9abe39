"""Detector-aware attacks (detector/adaptive/): budgets, relaxed gates, the network-alone attacks, Square."""

from pathlib import Path

import pytest
import torch

from detector import load_detector


@pytest.mark.parametrize("relax, orthogonal", [("st", False), (0.5, False), ("st", True)])
def test_adaptive_attack_stays_in_eps_ball_and_keeps_what_breaks_the_real_detector(
    tiny_bundle: Path, relax: str | float, orthogonal: bool
) -> None:
    from detector.adaptive import DetectorObjective, adaptive_pgd

    det = load_detector(tiny_bundle)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = det.predict(x).labels
    obj = DetectorObjective(det)
    x_adv = adaptive_pgd(obj, x, y, 8 / 255, steps=4, restarts=2, relax=relax, orthogonal=orthogonal)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    # success is the real detector's verdict: misclassified and not flagged
    p = det.predict(x_adv)
    assert torch.equal(obj.broken(x_adv, y), (p.labels != y) & ~p.is_adversarial)


def test_relaxed_gates_straight_through_is_exact_and_sigmoid_is_smooth(tiny_bundle: Path) -> None:
    det = load_detector(tiny_bundle)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    xg = x.clone().requires_grad_(True)
    with det.model.straight_through_paths():
        out = det.model.forward_paths(xg)
        out.z[5].sum().backward()
    assert torch.equal(out.logits.detach(), det.model(x).detach()) and xg.grad.abs().sum() > 0
    with det.model.relaxed_paths(0.5):
        soft = det.model.forward_paths(x)
    s = soft.s[5]
    assert torch.allclose(soft.z[5], torch.sigmoid(s / 0.5)) and all(u.relax is None for u in det.model.units())


def test_network_alone_attacks_follow_the_gates_gradient(tiny_bundle: Path) -> None:
    # the evaluation's network-alone attacks run on det.model itself; through straight-through gates the forward is
    # unchanged but the gates pass a gradient, so FGSM's step differs from the one with the gates' gradient blocked
    import torchattacks

    from detector.adaptive.evaluation import network_alone

    det = load_detector(tiny_bundle)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = det.predict(x).labels
    fgsm = torchattacks.FGSM(det.model, eps=8 / 255)
    st, hard = network_alone(det, fgsm)(x, y), network_alone(det, fgsm, "hard")(x, y)
    assert torch.equal(hard, fgsm(x, y)) and not torch.equal(st, hard)
    assert (st - x).abs().max() <= 8 / 255 + 1e-6 and all(u.relax is None for u in det.model.units())


def test_detector_aware_square_succeeds_only_when_misclassified_and_unflagged(tiny_bundle: Path) -> None:
    from detector.adaptive import DetectorAwareSquare

    det = load_detector(tiny_bundle)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = det.predict(x).labels
    sq = DetectorAwareSquare(det, eps=8 / 255, n_queries=20)
    m, _ = sq.margin_and_loss(x, y)
    p = det.predict(x)
    assert torch.equal(m <= 0, (p.labels != y) & ~p.is_adversarial)  # correct images: margin > 0
    adv = sq(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
