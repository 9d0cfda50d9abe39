"""Seeded, class-balanced index splits shared by calibration, evaluation and the studies.

The test set is split once into a *calibration* half (fits the scorer and its threshold) and a disjoint *evaluation*
half (every reported figure). Profiles come from the training set.
"""

from __future__ import annotations

import torch
from torch import Tensor

SPLIT_SEED = 20190604  # fixed, so that `dnd profiles` and `dnd evaluate` agree on the halves


def shuffled_per_class(y: Tensor, num_classes: int, seed: int) -> list[Tensor]:
    """Each class's indices into y, in a seeded random order (one generator, classes in order)."""
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    return [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]


def split_test(y: Tensor, num_classes: int, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """(calibration indices, evaluation indices): each class's images shuffled (seeded) and cut in half."""
    per_class = shuffled_per_class(y, num_classes, seed)
    cal = torch.cat([idx[: len(idx) // 2] for idx in per_class])
    ev = torch.cat([idx[len(idx) // 2 :] for idx in per_class])
    return cal.sort().values, ev.sort().values


def balanced_subset(idx: Tensor, y: Tensor, n: int, num_classes: int) -> Tensor:
    """The first ceil(n / K) indices of each class within idx (idx is already shuffled per class), n at most."""
    if n <= 0 or n >= len(idx):
        return idx
    per = -(-n // num_classes)
    picked = torch.cat([idx[y[idx] == c][:per] for c in range(num_classes)])
    return picked.sort().values[:n] if len(picked) > n else picked.sort().values


def fit_threshold_split(
    y: Tensor, num_classes: int, seed: int = 0, threshold_share: float = 0.4
) -> tuple[Tensor, Tensor]:
    """(fit indices, threshold indices) into calibration labels y: each class's images shuffled (seeded), the first
    `threshold_share` of them for the threshold, the rest for fitting the scorer."""
    per_class = shuffled_per_class(y, num_classes, seed)
    thr = torch.cat([idx[: round(len(idx) * threshold_share)] for idx in per_class])
    fit = torch.cat([idx[round(len(idx) * threshold_share) :] for idx in per_class])
    return fit, thr


def train_sample(y: Tensor, n: int, num_classes: int, seed: int = 1) -> Tensor:
    """Indices of a class-balanced, seeded sample of n training images (labels y), for the scorer's fit data."""
    return balanced_subset(torch.cat(shuffled_per_class(y, num_classes, seed)), y, n, num_classes)
