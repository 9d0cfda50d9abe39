"""Attacks on the calibration threshold part: how the served recipe detects, measured on the calibration half.

`dnd profiles --validation-attacks` runs these attacks, at their evaluation parameters (detector/attacks.py), on the
threshold part's correctly classified images after the scorer and the threshold are set: neither ever sees them.
Their AUROC against the threshold part's clean scores and the share flagged at the served threshold go into the
calibration record, so that a choice between two recipes (more training images for an attack family, another tree
setting) can be made on the calibration half, never on the evaluation's images. An attack named here informs
choices: `dnd evaluate` refuses it as unseen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor
from tqdm import tqdm

from .attack_cache import AttackCache, tensor_sha256

# (name, images, labels) -> (adversarial images, success mask (N,))
Attack = Callable[[str, Tensor, Tensor], tuple[Tensor, Tensor]]


def validation_figures(
    names: tuple[str, ...],
    attack: Attack,
    score: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    clean_scores: Tensor,
    threshold: float,
    cache: AttackCache,
) -> dict[str, dict[str, Any]]:
    """Per attack: successful adversarial images, their AUROC against clean_scores and the share above threshold."""
    from .evaluation.rocs import auroc

    out = {}
    for name in tqdm(names, desc="validation attacks", unit="attack"):
        t = cache.tensors(
            f"validation-{name}",
            lambda n=name: dict(zip(("x_adv", "success"), attack(n, x, y), strict=True)),
            images=tensor_sha256(x),
            labels=tensor_sha256(y),
        )
        adv = t["x_adv"][t["success"]]
        s = score(adv) if len(adv) else clean_scores[:0]
        out[name] = {
            "offered": len(y),
            "n": len(s),
            "auroc": round(auroc(clean_scores, s), 4) if len(s) and len(clean_scores) else None,
            "flagged": round(float((s > threshold).float().mean()), 4) if len(s) else None,
        }
    return out
