"""Path divergence: how far an input's calculation path is from the reference path of its predicted class."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def path_distances(z: list[Tensor], labels: Tensor, signatures: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-layer distances of paths z (L x (N, C_l), bool) to the signatures (L x (K, C_l), bool) of `labels` (N,).

    Returns (hamming, jaccard), each (N, L): Hamming = share of the layer's filters whose state differs;
    Jaccard = 1 - |z AND s| / |z OR s| (0 when both are empty)."""
    ham, jac = [], []
    for zl, sl in zip(z, signatures):
        ref = sl[labels]
        zl = zl.bool()
        ham.append((zl != ref).float().mean(1))
        inter = (zl & ref).sum(1).float()
        union = (zl | ref).sum(1).float()
        jac.append(torch.where(union > 0, 1 - inter / union.clamp_min(1), torch.zeros_like(union)))
    return torch.stack(ham, 1), torch.stack(jac, 1)


def calibrate_threshold(clean_scores: Tensor, target_fpr: float) -> float:
    """Smallest threshold t with share(clean_scores > t) <= target_fpr (inputs scoring above t are flagged)."""
    if not 0 <= target_fpr < 1:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    s = torch.sort(clean_scores.double().flatten(), descending=True).values
    if len(s) == 0:
        raise ValueError("need at least one clean calibration score")
    k = math.floor(target_fpr * len(s))  # at most k clean scores may lie above t
    return float(s[k]) if k < len(s) else float(s[-1])
