"""Images the scorer studies work on, cut exactly as `dnd profiles` cuts them (imported by scripts/scorer_*_study.py)."""
import sys

import torch

from detector.calibration import fit_threshold_split, split_test, train_sample
from detector.data import load_split, to_unit_float
from detector.scoring import path_features, without_likelihoods


def calibration_parts(root: str = ".data", n_train: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"fit", "thr"[, "train"]: (images in [0, 1], labels)}: the calibration half's fit and threshold parts (the cut
    detector.calibration.calibrate makes) and, with n_train > 0, the class-balanced training sample that
    `dnd profiles --calib-train` takes. The evaluation half is never returned."""
    test = load_split(root, "test")
    cal, _ = split_test(test.y, 10)
    xc, yc = to_unit_float(test.x[cal]), test.y[cal]
    fit_idx, thr_idx = fit_threshold_split(yc, 10)
    parts = {"fit": (xc[fit_idx], yc[fit_idx]), "thr": (xc[thr_idx], yc[thr_idx])}
    if n_train:
        train = load_split(root, "train")
        idx = train_sample(train.y, n_train, 10)
        parts["train"] = (to_unit_float(train.x[idx]), train.y[idx])
    return parts


def take_flag(name: str = "--without-likelihoods") -> bool:
    """Whether `name` is on the command line (removed from sys.argv, so positional arguments keep their places)."""
    if name in sys.argv:
        sys.argv.remove(name)
        return True
    return False


def strip_likelihoods(sets: dict[str, dict[str, torch.Tensor]], freq: list[torch.Tensor]) -> dict:
    """{part: {set: features}} with the likelihood columns dropped: the 708 features of figures measured before
    session 10."""
    widths = [f.shape[1] for f in freq]
    return {p: {a: without_likelihoods(v, widths) for a, v in d.items()} for p, d in sets.items()}


def cached_features(sets: dict[str, dict[str, tuple]], freq: list[torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{part: {set: path_features}} from the path cache of scripts/scorer_likelihood_study.py, whose entries are
    (paths (N, sum C_l) bool, predictions (N,), true labels (N,))."""
    widths = [f.shape[1] for f in freq]
    return {p: {a: path_features(list(torch.split(e[0], widths, 1)), e[1], freq) for a, e in d.items()}
            for p, d in sets.items()}
