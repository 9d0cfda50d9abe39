"""Robust accuracy with rejection: the share of images a user keeps (classified correctly, or flagged) under the
strongest detector-aware attacks here, at several Linf budgets.

Attacks per budget, each judged by the real detector on the real eval-time path (an image counts as kept against
an attack when the attack's image is classified correctly or flagged):
- pgd-st: detector-aware PGD through straight-through gates (the exact paths, SemHash v1's gradient);
- pgd-sigmoid: the same through tempered sigmoid gates (z = sigmoid(s / T));
- opgd-st: orthogonal PGD (Bryniarski et al. 2022) through straight-through gates;
- square: the score-based black box on the real label, score and flag;
- apgd-ce: torchattacks' APGD-CE on the network alone (an attacker who ignores the detector); apgd-ce-gates-blocked,
  the same with the gates' gradient blocked; at the largest budget autoattack: torchattacks' AutoAttack (standard),
  as RobustBench reports models.
The worst case keeps an image only if every attack fails on it. The network alone (no rejection) is scored on the
same images: `model_alone_worst` counts an image only if it is classified correctly under every attack, so
`detector_adds` = worst_case - model_alone_worst is what rejection adds against the attacks run here (never negative:
a kept image is correct or flagged).

The network-alone attacks run on `det.model` inside `straight_through_paths()`: the forward pass is the eval-time
network itself, but the binary gates pass SemHash v1's gradient instead of none. With the gradient blocked, APGD-CE
kept 52% of the robust bundle's images at 4/255 against 49% through straight-through gates (100 images, measured): the
gates mask a little gradient, so each budget reports both, and the sanity check says whether blocking ever helped the
network. The other sanity checks: a weaker PGD (20 steps, 1 restart) must not keep fewer images than the full one,
and an unbounded budget must keep almost none.
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


def network_alone(det: Detector, attack: Callable[[Tensor, Tensor], Tensor], gates: str = "st") -> Callable:
    """A torchattacks attack on det.model, through straight-through gates ("st": same forward, v1's gradient) or
    with the gates' gradient blocked ("hard": the plain eval-time network)."""

    def run(x: Tensor, y: Tensor) -> Tensor:
        if gates == "hard":
            return attack(x, y)
        with det.model.straight_through_paths():
            return attack(x, y)

    return run


# the network-alone attacks' images, also scored without rejection: attack name -> report key
ALONE = {"apgd-ce": "model_alone_apgd_ce", "apgd-ce-gates-blocked": "model_alone_apgd_ce_gates_blocked"}


def _judge(det: Detector, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(N,) bool twice: classified correctly; kept (classified correctly or flagged)."""
    p = det.predict(x_adv)
    correct = p.labels == y
    return correct, correct | p.is_adversarial


def _share(m: Tensor) -> float:
    return round(float(m.float().mean()), 4)


def attacks_at(det: Detector, eps: float, cfg: AdaptiveConfig, top: bool = False) -> dict[str, Any]:
    """name -> callable(x, y) -> adversarial images, for budget eps in [0, 1]; `top` adds AutoAttack."""
    obj = DetectorObjective(det)
    s, r, seed = cfg.steps, cfg.restarts, cfg.seed
    apgd = torchattacks.APGD(det.model, eps=eps, steps=s, loss="ce", n_restarts=1)
    attacks = {
        "pgd-st": lambda x, y: adaptive_pgd(obj, x, y, eps, s, r, "st", cfg.beta, seed=seed),
        "pgd-sigmoid": lambda x, y: adaptive_pgd(obj, x, y, eps, s, r, cfg.temperature, cfg.beta, seed=seed),
        "opgd-st": lambda x, y: adaptive_pgd(obj, x, y, eps, s, r, "st", orthogonal=True, seed=seed),
        "square": lambda x, y: batched(
            DetectorAwareSquare(det, eps=eps, n_queries=cfg.square_queries, seed=seed), x, y, seed
        ),
        "apgd-ce": lambda x, y: batched(network_alone(det, apgd), x, y, seed),
        # the same with the gates' gradient blocked: the gradient-masking check compares the two (sanity below)
        "apgd-ce-gates-blocked": lambda x, y: batched(network_alone(det, apgd, "hard"), x, y, seed),
    }
    if top and cfg.autoattack:
        k = len(det.classes)
        aa = torchattacks.AutoAttack(det.model, norm="Linf", eps=eps, version="standard", n_classes=k, seed=seed)
        attacks["autoattack"] = network_alone(det, aa)
    return attacks


def robust_report(det: Detector, x: Tensor, y: Tensor, cfg: AdaptiveConfig = AdaptiveConfig()) -> dict[str, Any]:
    """x (N, 3, S, S) clean test images (all of them, correct or not), labels y (N,)."""
    clean = det.predict(x)
    clean_ok = clean.labels == y
    base = clean_ok | clean.is_adversarial
    res: dict[str, Any] = {
        "config": cfg.to_dict(),
        "n": len(y),
        "clean_accuracy": _share(clean_ok),
        "clean_flag_rate": _share(clean.is_adversarial),
        "budgets": {},
    }
    top = max(cfg.eps)
    for e in tqdm(cfg.eps, desc="adaptive budgets", unit="eps"):
        row: dict[str, Any] = {}
        worst, alone = base.clone(), clean_ok.clone()  # kept against every attack; correct under every attack
        for name, attack in attacks_at(det, e / 255, cfg, top=e == top).items():
            correct, kept = _judge(det, attack(x, y), y)
            row[name] = _share(base & kept)
            worst &= kept
            alone &= correct
            if name in ALONE:  # the network alone, as published robust-accuracy figures are
                row[ALONE[name]] = _share(clean_ok & correct)
            if name == "autoattack":
                res["model_alone_autoattack"] = _share(clean_ok & correct)
        row["worst_case"], row["model_alone_worst"] = _share(worst), _share(alone)
        row["detector_adds"] = round(row["worst_case"] - row["model_alone_worst"], 4)
        res["budgets"][f"{e:g}/255"] = row
    res["sanity"] = sanity(det, x, y, cfg, base, res["budgets"])
    return res


def sanity(det: Detector, x: Tensor, y: Tensor, cfg: AdaptiveConfig, base: Tensor, rows: dict[str, Any]) -> dict:
    """At the largest budget a weaker PGD must keep at least as many images and an unbounded one almost none; at
    every budget, APGD-CE through straight-through gates must leave the network no more accurate than with the gates'
    gradient blocked."""
    eps, obj = max(cfg.eps) / 255, DetectorObjective(det)
    weak = adaptive_pgd(obj, x, y, eps, 20, 1, "st", cfg.beta, seed=cfg.seed)
    unbounded = adaptive_pgd(obj, x, y, 1.0, cfg.steps, 1, "st", cfg.beta, seed=cfg.seed)
    s: dict[str, Any] = {
        "pgd-st_20_steps_1_restart": _share(base & _judge(det, weak, y)[1]),
        "pgd-st_unbounded": _share(base & _judge(det, unbounded, y)[1]),
    }
    s["more_steps_never_raise"] = rows[f"{max(cfg.eps):g}/255"]["pgd-st"] <= s["pgd-st_20_steps_1_restart"]
    s["gate_gradient_never_weakens"] = all(
        r["model_alone_apgd_ce"] <= r["model_alone_apgd_ce_gates_blocked"] for r in rows.values()
    )
    return s
