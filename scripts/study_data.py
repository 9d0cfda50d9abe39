"""Images the scorer studies work on, cut exactly as `dnd profiles` cuts them (imported by scripts/scorer_*_study.py)."""
import sys
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detector.calibration import fit_threshold_split, split_test, train_sample
from detector.data import load_split, to_unit_float
from detector.scoring import PathScorer, path_features, without_likelihoods

FOUR = ["fgsm", "pgd", "cw", "deepfool"]
# The single tree model `dnd profiles` shipped until session 11 (one model on all attacks): the settings every study
# figure in docs/detector-studies.md was measured with (the shipped scorer now fits one smaller model per attack
# family).
SINGLE_TREE_PARAMS = {"learning_rate": 0.05, "max_iter": 600, "max_leaf_nodes": 31, "early_stopping": False,
                      "random_state": 0}


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


def cached_features(sets: dict[str, dict[str, tuple]], freq: list[torch.Tensor],
                    gate_mean: list[torch.Tensor] | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{part: {set: path_features}} from a path cache: scripts/scorer_likelihood_study.py's, whose entries are
    (paths (N, sum C_l) bool, predictions (N,), true labels (N,)), or scripts/scorer_logit_study.py's, whose entries
    are (predictions (N,), paths (N, sum C_l) bool, gate logits (N, sum C_l)). With gate_mean (the profiles' class
    means of the gate logits) and the latter cache, the features include the gate-logit columns, as shipped."""
    widths = [f.shape[1] for f in freq]

    def one(e: tuple) -> torch.Tensor:
        if e[0].dtype == torch.bool:  # likelihood-study cache: no gate logits
            return path_features(list(torch.split(e[0], widths, 1)), e[1], freq)
        pred, z, s = e
        gates = list(torch.split(s, widths, 1)) if gate_mean is not None else None
        return path_features(list(torch.split(z, widths, 1)), pred, freq, s=gates, gate_mean=gate_mean)

    return {p: {a: one(e) for a, e in d.items()} for p, d in sets.items()}


def thr_labels(F: dict[str, dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Per attack, the 0 (clean) / 1 (attacked) labels of the threshold part's rows [clean, attack]."""
    return {a: np.r_[np.zeros(len(F["thr"]["clean"])), np.ones(len(F["thr"][a]))] for a in FOUR}


def fit_rows(F: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{set: features}: the fit and training parts' rows of each set (clean and the four attacks) stacked, the rows the
    study scorers are fitted on."""
    return {a: torch.cat([F[p][a] for p in ("fit", "train")]) for a in ["clean", *FOUR]}


def thr_aurocs(F: dict[str, dict[str, torch.Tensor]], score: Callable[[torch.Tensor], np.ndarray],
               attacks: list[str] = FOUR) -> list[float]:
    """AUROC per attack on the threshold part (its clean rows against the attack's), `score`: (N, F) -> (N,)."""
    s0, y_of = score(F["thr"]["clean"]), thr_labels(F)
    return [roc_auc_score(y_of[a], np.r_[s0, score(F["thr"][a])]) for a in attacks]


def fit_scores(F: dict[str, dict[str, torch.Tensor]], attacks: list[str] = FOUR) -> tuple[dict[str, np.ndarray], str]:
    """Fit the trees (`PathScorer.fit`) on the fit + training parts' clean rows against their `attacks` rows (all
    four: the `dnd profiles` mix). Returns the threshold part's scores {set: (N,)} and a description of the fit."""
    clean = torch.cat([F[p]["clean"] for p in ("fit", "train")])
    att = torch.cat([F[p][a] for p in ("fit", "train") for a in attacks if a in F[p]])
    sc = PathScorer.fit(clean, {"attacked": att}, tree_params=SINGLE_TREE_PARAMS)
    scores = {a: sc.score(F["thr"][a]).double().numpy() for a in ["clean", *FOUR]}
    return scores, f"{clean.shape[1]} features, {len(clean)} clean, {len(att)} attacked"


def mix_scores(F: dict[str, dict[str, torch.Tensor]], name: str) -> dict[str, np.ndarray]:
    """`fit_scores` on the mix of all four attacks, printing the threshold part's AUROC per attack."""
    scores, what = fit_scores(F)
    y_of = thr_labels(F)
    au = [roc_auc_score(y_of[a], np.r_[scores["clean"], scores[a]]) for a in FOUR]
    print(f"trees {name:20s} ({what}): " + " ".join(f"{a} {v:.4f}" for a, v in zip(FOUR, au)), flush=True)
    return scores


def paired_interval(s0: dict[str, np.ndarray], s1: dict[str, np.ndarray], a: str, rng: np.random.Generator,
                    draws: int = 300) -> tuple[float, float]:
    """95% bootstrap interval of AUROC(s1) - AUROC(s0) on attack a: clean and attacked rows resampled, scorers fixed."""
    y = np.r_[np.zeros(len(s0["clean"])), np.ones(len(s0[a]))]
    n0, n1 = len(s0["clean"]), len(s0[a])
    d = []
    for _ in range(draws):
        i0, i1 = rng.integers(0, n0, n0), rng.integers(0, n1, n1)
        d.append(roc_auc_score(y, np.r_[s1["clean"][i0], s1[a][i1]]) - roc_auc_score(y, np.r_[s0["clean"][i0], s0[a][i1]]))
    return float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))
