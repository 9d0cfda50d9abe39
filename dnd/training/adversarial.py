"""Adversarial training: each step trains on worst-case perturbations of its batch (Madry et al. 2018).

`perturb` is PGD in the Linf ball from a uniform random start; with one step of 1.25 x eps it is "FGSM with random
start" (Wong et al. 2020), which costs one extra forward and backward pass per step instead of PGD's k. Fast methods
can overfit catastrophically: robust accuracy against a multi-step attack collapses to ~0 within an epoch while
accuracy against the training attack stays high. `robust_accuracy` (PGD-10 on test images, every epoch) watches
for that, and `catastrophic_overfitting` names it in the run's log and bundle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detector.data import Split, to_unit_float
from detector.splits import balanced_subset, shuffled_per_class

PIXEL = 1 / 255  # eps and alpha are given in 8-bit pixel steps (8 = 8/255)


def step_size(eps: float, steps: int, alpha: float = 0.0) -> float:
    """The attack's step in [0, 1] units: alpha (pixel steps) if given, else 1.25 eps for one step (Wong et al.) and
    2.5 eps / steps for PGD (Madry et al.), so that k steps can cross the ball from the random start."""
    if alpha > 0:
        return alpha * PIXEL
    return (1.25 if steps == 1 else 2.5 / steps) * eps * PIXEL


@contextmanager
def frozen_bn_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm keeps normalising with batch statistics (train mode) but does not fold the attack's forward passes
    into its running statistics (momentum 0 leaves them as they are)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def perturb(
    model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 1, alpha: float = 0.0, bf16: bool = False
) -> Tensor:
    """x (B, 3, H, W) in [0, 1], labels y (B,) -> x + delta with |delta|_inf <= eps * PIXEL, clipped to [0, 1].
    The model runs in its current mode (training: batch statistics, gate noise), its BN running statistics untouched;
    only the input gradient is computed (no weight gradients accumulate). eps, alpha in pixel steps."""
    e, a = eps * PIXEL, step_size(eps, steps, alpha)
    delta = (torch.rand_like(x) * 2 - 1) * e
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    with frozen_bn_statistics(model):
        for _ in range(steps):
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x + delta).float(), y)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = (delta + a * grad.sign()).clamp(-e, e)
                delta = (x + delta).clamp(0, 1) - x
            delta.requires_grad_(True)
    return (x + delta.detach()).contiguous(memory_format=torch.channels_last)


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 10,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
) -> float:
    """Share of images x (N, 3, H, W) in [0, 1] still classified as y after torchattacks' PGD (Linf eps pixel steps,
    step eps / 4, random start) in eval mode. The model's mode is restored afterwards."""
    import torchattacks

    was_training = model.training
    model.eval()
    attack = torchattacks.PGD(model, eps=eps * PIXEL, alpha=eps * PIXEL / 4, steps=steps, random_start=True)
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        adv = attack(xb.contiguous(), yb)
        with torch.no_grad():
            correct += int((model(adv).argmax(1) == yb).sum())
    model.train(was_training)
    return correct / max(len(x), 1)


def catastrophic_overfitting(history: list[dict], key: str = "test_robust_accuracy") -> bool:
    """True once the robust accuracy of the last epoch fell below half the best one seen (and below 10%): the
    signature of catastrophic overfitting of single-step adversarial training (Wong et al. 2020, Fig. 2)."""
    values = [h[key] for h in history if key in h]
    return bool(values) and values[-1] < 0.1 and values[-1] < 0.5 * max(values)


def pgd_test_accuracy(
    model: nn.Module, test: Split, eps: float, limit: int = 1000, device: torch.device | str = "cpu"
) -> float:
    """PGD-10 accuracy (Linf eps pixel steps) on `limit` seeded, class-balanced test images: the figure training logs
    per epoch and `dnd stats` records. Class-balanced because the image-folder test set is sorted by class."""
    k = int(test.y.max()) + 1
    idx = balanced_subset(torch.cat(shuffled_per_class(test.y, k, seed=0)), test.y, limit, k)
    x = to_unit_float(test.x[idx]).contiguous(memory_format=torch.channels_last)
    return round(robust_accuracy(model, x, test.y[idx], eps, device=device), 4)
