"""Detection figures with bootstrap 95% intervals: AUROC, TPR at 5% FPR, TPR at a fixed threshold.

Negatives are clean images, positives successful attacks; higher scores mean more suspicious. Intervals come from
resampling negatives and positives (each with replacement, separately) `rounds` times, seeded: the 2.5th and 97.5th
percentiles of each figure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor


def _np(t: Tensor | np.ndarray) -> np.ndarray:
    return t.double().numpy() if isinstance(t, Tensor) else np.asarray(t, dtype=np.float64)


def _tpr_at_fpr(neg: np.ndarray, pos: np.ndarray, max_fpr: float) -> float:
    y = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    fpr, tpr, _ = roc_curve(y, np.r_[neg, pos])
    return float(tpr[fpr <= max_fpr].max())


def auroc(neg: Tensor | np.ndarray, pos: Tensor | np.ndarray) -> float:
    """AUROC of negatives (clean) against positives (attacked); higher scores = more suspicious."""
    neg, pos = _np(neg), _np(pos)
    return float(roc_auc_score(np.r_[np.zeros(len(neg)), np.ones(len(pos))], np.r_[neg, pos]))


def bootstrap_aurocs(neg: np.ndarray, pos: np.ndarray, neg_idx: np.ndarray, pos_idx: np.ndarray) -> np.ndarray:
    """AUROC of each bootstrap round (R,): negatives neg[neg_idx[r]] against positives pos[pos_idx[r]] (index arrays
    (R, n) and (R, m)). The Mann-Whitney U of the positives over the negatives, / (m n), ties counting one half: the
    area roc_auc_score gives, for all rounds in one call: a roc_auc_score call per round costs milliseconds of input
    checks alone, and an evaluation asks for hundreds of figures of 500 rounds each."""
    u = mannwhitneyu(pos[pos_idx], neg[neg_idx], axis=1, method="asymptotic", use_continuity=False).statistic
    return np.asarray(u, dtype=np.float64) / (neg_idx.shape[1] * pos_idx.shape[1])


def interval(values: list[float] | np.ndarray) -> list[float]:
    return [round(float(np.percentile(values, 2.5)), 4), round(float(np.percentile(values, 97.5)), 4)]


def detection_figures(
    neg: Tensor, pos: Tensor, threshold: float | None = None, rounds: int = 500, seed: int = 0, max_fpr: float = 0.05
) -> dict[str, Any]:
    """AUROC, TPR at `max_fpr` FPR and (with a threshold) TPR at it, each with its bootstrap 95% interval; plus the
    ROC curve ("curve": (fpr, tpr), for plots; not for JSON)."""
    n, p = _np(neg), _np(pos)
    if len(n) == 0 or len(p) == 0:
        return {"auroc": None, "tpr_at_5fpr": None, "n_neg": len(n), "n_pos": len(p)}
    rng = np.random.default_rng(seed)
    draws = [(rng.integers(0, len(n), len(n)), rng.integers(0, len(p), len(p))) for _ in range(rounds)]
    boot: dict[str, Any] = {"auroc": [], "tpr_at_5fpr": [], "tpr_at_threshold": []}
    for lo in range(0, rounds, 100):  # (100, n + m) rank matrices at a time
        chunk = draws[lo : lo + 100]
        boot["auroc"].extend(bootstrap_aurocs(n, p, np.stack([a for a, _ in chunk]), np.stack([b for _, b in chunk])))
    for ni, pi in draws:
        bn, bp = n[ni], p[pi]
        boot["tpr_at_5fpr"].append(_tpr_at_fpr(bn, bp, max_fpr))
        if threshold is not None:
            boot["tpr_at_threshold"].append(float((bp > threshold).mean()))
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(len(n)), np.ones(len(p))], np.r_[n, p])
    out: dict[str, Any] = {
        "auroc": round(auroc(n, p), 4),
        "auroc_ci": interval(boot["auroc"]),
        "tpr_at_5fpr": round(_tpr_at_fpr(n, p, max_fpr), 4),
        "tpr_at_5fpr_ci": interval(boot["tpr_at_5fpr"]),
        "n_neg": len(n),
        "n_pos": len(p),
        "curve": (fpr, tpr),
    }
    if threshold is not None:
        out["tpr_at_threshold"] = round(float((p > threshold).mean()), 4)
        out["tpr_at_threshold_ci"] = interval(boot["tpr_at_threshold"])
    return out


def flag_rate(scores: Tensor, threshold: float, rounds: int = 500, seed: int = 0) -> dict[str, Any]:
    """Share of `scores` above `threshold`, with its bootstrap 95% interval (a false-positive rate on clean images)."""
    s = _np(scores)
    if len(s) == 0:
        return {"rate": None, "n": 0}
    rng = np.random.default_rng(seed)
    boot = [float((s[rng.integers(0, len(s), len(s))] > threshold).mean()) for _ in range(rounds)]
    return {"rate": round(float((s > threshold).mean()), 4), "ci": interval(boot), "n": len(s)}
