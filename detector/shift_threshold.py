"""The threshold against clean but shifted images: how many of the calibration threshold part's clean images the
fitted score flags once they are noisy, blurred, recompressed or recoloured, and a threshold that bounds that too.

`dnd profiles` sets the threshold at the target false-positive rate on the threshold part's clean images, which the
scorer never saw. The same images under each weighed corruption (detector/corruptions.py SELECTION_CORRUPTIONS; the
evaluation's held-out shifts are never used) tell, on the calibration half, how many shifted clean images that
threshold flags: the record keeps it for every profile. With a shift limit, the threshold rises until no weighed
corruption's still correctly classified images are flagged more often than the limit, at the cost of flagging fewer
attacks and fewer than the target share of clean images.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from tqdm import tqdm

from .corruptions import SELECTION_CORRUPTIONS, corrupt
from .scorer import calibrate_threshold

# (images (N, 3, H, W) in [0, 1], labels (N,)) -> scores of the images the network still classifies correctly
ScoreCorrect = Callable[[Tensor, Tensor], Tensor]


def shifted_scores(
    score: ScoreCorrect, x: Tensor, y: Tensor, names: tuple[str, ...] = SELECTION_CORRUPTIONS
) -> dict[str, Tensor]:
    """Per corruption: the scores of x under it, those still correctly classified only (a misclassified image is an
    error of the network, not a false alarm of the detector)."""
    return {c: score(corrupt(c, x), y) for c in tqdm(names, desc="shifted clean images", unit="corruption")}


def flagged(scores: dict[str, Tensor], threshold: float) -> dict[str, float]:
    return {c: round(float((s > threshold).float().mean()), 4) if len(s) else 0.0 for c, s in scores.items()}


def shift_bounded_threshold(
    clean: Tensor, shifted: dict[str, Tensor], target_fpr: float, max_shift_flagged: float
) -> tuple[float, str]:
    """The smallest threshold flagging at most target_fpr of `clean` and, with max_shift_flagged > 0, at most that
    share of each corruption's scores. Returns (threshold, what bound it: "clean" or the corruption's name)."""
    t, by = calibrate_threshold(clean, target_fpr), "clean"
    if max_shift_flagged <= 0:
        return t, by
    for c, s in shifted.items():
        if len(s) and (tc := calibrate_threshold(s, max_shift_flagged)) > t:
            t, by = tc, c
    return t, by
