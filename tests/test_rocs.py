"""Detection figures: the bootstrap intervals are those of resampling with sklearn's own metrics, round by round."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from detector.evaluation.rocs import bootstrap_aurocs, detection_figures, interval


def scores(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clean and attacked scores, rounded so that many tie within and across the two sets."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(0, 1, n), 1), np.round(rng.normal(0.8, 1, m), 1)


@pytest.mark.parametrize("n, m", [(1, 1), (7, 3), (200, 150)])
def test_bootstrap_aurocs_are_roc_auc_score_of_each_round(n: int, m: int) -> None:
    neg, pos = scores(n, m, n)
    rng = np.random.default_rng(1)
    ni, pi = rng.integers(0, n, (40, n)), rng.integers(0, m, (40, m))
    want = [roc_auc_score(np.r_[np.zeros(n), np.ones(m)], np.r_[neg[a], pos[b]]) for a, b in zip(ni, pi)]
    assert bootstrap_aurocs(neg, pos, ni, pi) == pytest.approx(want, abs=1e-12)


def test_intervals_match_a_round_by_round_bootstrap_with_the_same_draws() -> None:
    neg, pos = scores(300, 120, 3)
    figs = detection_figures(torch.from_numpy(neg), torch.from_numpy(pos), threshold=0.5, rounds=60, seed=4)
    rng = np.random.default_rng(4)  # the same seeded draws, negatives then positives, round by round
    aurocs = []
    for _ in range(60):
        bn, bp = neg[rng.integers(0, 300, 300)], pos[rng.integers(0, 120, 120)]
        aurocs.append(roc_auc_score(np.r_[np.zeros(300), np.ones(120)], np.r_[bn, bp]))
    assert figs["auroc_ci"] == interval(aurocs)
    assert figs["auroc"] == round(roc_auc_score(np.r_[np.zeros(300), np.ones(120)], np.r_[neg, pos]), 4)
    assert figs["auroc_ci"][0] < figs["auroc"] < figs["auroc_ci"][1]
    assert figs["tpr_at_threshold"] == round(float((pos > 0.5).mean()), 4)
