"""Robust accuracy with rejection: the share of images a user keeps (classified correctly, or flagged) under the
strongest detector-aware attacks here, at several Linf budgets.

Attacks per budget, each judged by the real detector on the real eval-time path (an image counts as kept against
an attack when the attack's image is classified correctly or flagged):
- pgd-st: detector-aware PGD through straight-through gates (the exact paths, SemHash v1's gradient);
- pgd-sigmoid: the same through tempered sigmoid gates (z = sigmoid(s / T));
- opgd-st: orthogonal PGD (Bryniarski et al. 2022) through straight-through gates;
- square: the score-based black box on the real label, score and flag.
The worst case keeps an image only if every attack fails on it. For comparison, the network alone (no rejection)
under APGD-CE and, at the largest budget, torchattacks' AutoAttack (as RobustBench reports models). Sanity checks:
a weaker PGD (20 steps, 1 restart) must not keep fewer images than the full one, and an unbounded budget must keep
almost none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchattacks
from torch import Tensor
from tqdm import tqdm

from ..api import Detector
from ..parallel import shard_map
from .objective import DetectorObjective
from .pgd import adaptive_pgd
from .square import DetectorAwareSquare


@dataclass(frozen=True)
class AdaptiveConfig:
    eps: tuple[float, ...] = (2.0, 4.0, 8.0)  # Linf budgets in 1/255
    steps: int = 100
    restarts: int = 5
    temperature: float = 0.5  # of the sigmoid relaxation
    beta: float = 1.0  # weight of the detector term in the summed loss
    square_queries: int = 1000
    autoattack: bool = True  # torchattacks AutoAttack (standard) on the network alone at the largest budget
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def batched(attack: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, seed: int, size: int = 250) -> Tensor:
    """A torchattacks attack over x in batches, each seeded on its own and, under torchrun, shared across processes."""

    def one(b: int) -> Tensor:
        torch.manual_seed(seed * 1_000_003 + b)
        return attack(x[b * size : (b + 1) * size], y[b * size : (b + 1) * size]).detach().cpu()

    parts = shard_map(one, -(-len(x) // size))
    return torch.cat(parts) if parts else x.clone()


def _kept(det: Detector, x_adv: Tensor, y: Tensor) -> Tensor:
    """(N,) bool: classified correctly or flagged."""
    p = det.predict(x_adv)
    return (p.labels == y) | p.is_adversarial


def attacks_at(det: Detector, eps: float, cfg: AdaptiveConfig) -> dict[str, Any]:
    """name -> callable(x, y) -> adversarial images, for budget eps in [0, 1]."""
    obj = DetectorObjective(det)
    s, r, seed = cfg.steps, cfg.restarts, cfg.seed
    return {
        "pgd-st": lambda x, y: adaptive_pgd(obj, x, y, eps, s, r, "st", cfg.beta, seed=seed),
        "pgd-sigmoid": lambda x, y: adaptive_pgd(obj, x, y, eps, s, r, cfg.temperature, cfg.beta, seed=seed),
        "opgd-st": lambda x, y: adaptive_pgd(obj, x, y, eps, s, r, "st", orthogonal=True, seed=seed),
        "square": lambda x, y: batched(
            DetectorAwareSquare(det, eps=eps, n_queries=cfg.square_queries, seed=seed), x, y, seed
        ),
    }


def model_alone(det: Detector, x: Tensor, y: Tensor, eps: float, steps: int) -> float:
    """Accuracy of the network alone (no rejection) under APGD-CE."""
    adv = batched(torchattacks.APGD(det.model, eps=eps, steps=steps, loss="ce", n_restarts=1), x, y, 0)
    return float((det.predict(adv).labels == y).float().mean())


def robust_report(det: Detector, x: Tensor, y: Tensor, cfg: AdaptiveConfig = AdaptiveConfig()) -> dict[str, Any]:
    """x (N, 3, 32, 32) clean test images (all of them, correct or not), labels y (N,)."""
    clean = det.predict(x)
    base = (clean.labels == y) | clean.is_adversarial
    res: dict[str, Any] = {
        "config": cfg.to_dict(),
        "n": len(y),
        "clean_accuracy": round(float((clean.labels == y).float().mean()), 4),
        "clean_flag_rate": round(float(clean.is_adversarial.float().mean()), 4),
        "budgets": {},
    }
    for e in tqdm(cfg.eps, desc="adaptive budgets", unit="eps"):
        eps = e / 255
        row: dict[str, Any] = {}
        worst = base.clone()
        for name, attack in attacks_at(det, eps, cfg).items():
            kept = base & _kept(det, attack(x, y), y)
            row[name] = round(float(kept.float().mean()), 4)
            worst &= kept
        row["worst_case"] = round(float(worst.float().mean()), 4)
        row["model_alone_apgd_ce"] = round(model_alone(det, x, y, eps, cfg.steps), 4)
        res["budgets"][f"{e:g}/255"] = row
    top = max(cfg.eps) / 255
    weak = adaptive_pgd(DetectorObjective(det), x, y, top, 20, 1, "st", cfg.beta, seed=cfg.seed)
    unbounded = adaptive_pgd(DetectorObjective(det), x, y, 1.0, cfg.steps, 1, "st", cfg.beta, seed=cfg.seed)
    res["sanity"] = {
        "pgd-st_20_steps_1_restart": round(float((base & _kept(det, weak, y)).float().mean()), 4),
        "pgd-st_unbounded": round(float((base & _kept(det, unbounded, y)).float().mean()), 4),
    }
    full = res["budgets"][f"{max(cfg.eps):g}/255"]["pgd-st"]
    res["sanity"]["more_steps_never_raise"] = full <= res["sanity"]["pgd-st_20_steps_1_restart"]
    if cfg.autoattack:
        aa = torchattacks.AutoAttack(
            det.model, norm="Linf", eps=top, version="standard", n_classes=len(det.classes), seed=cfg.seed
        )(x, y)
        res["model_alone_autoattack"] = round(float((det.predict(aa).labels == y).float().mean()), 4)
    return res
