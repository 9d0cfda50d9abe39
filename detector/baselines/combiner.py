"""The supervised baselines' last stage: a logistic regression (standardised inputs, balanced classes) over a few
per-layer statistics, fitted on clean (negatives) and attacked (positives) images, as Lee et al. 2018 and Ma et al.
2018 combine theirs."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class LogisticCombiner:
    def __init__(self, clean: np.ndarray, attacked: np.ndarray) -> None:
        """clean (N0, L) and attacked (N1, L) per-layer statistics."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = np.concatenate([clean, attacked]), np.r_[np.zeros(len(clean)), np.ones(len(attacked))]
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, class_weight="balanced"))
        self.model.fit(x, y)

    def __call__(self, x: np.ndarray) -> Tensor:
        """(N, L) -> (N,) log-odds of "attacked"."""
        return torch.from_numpy(self.model.decision_function(x)).float()
