"""Baseline detectors a user would otherwise pick, on the same model and images (higher score = more suspicious).

- max softmax probability (Hendrycks & Gimpel 2017): score = -max_k p_k;
- Mahalanobis distance on penultimate features (Lee et al. 2018, no input preprocessing): class means and one
  shared covariance from training features; score = min_k (f - mu_k)^T Sigma^-1 (f - mu_k).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def msp_score(logits: Tensor) -> Tensor:
    """(N, K) logits -> (N,) negative max softmax probability."""
    return -logits.softmax(1).max(1).values


@dataclass(frozen=True)
class Mahalanobis:
    means: Tensor  # (K, D) class means
    precision: Tensor  # (D, D) inverse of the shared (tied) covariance

    @classmethod
    def fit(cls, features: Tensor, labels: Tensor, num_classes: int) -> Mahalanobis:
        f = features.double()
        means = torch.stack([f[labels == k].mean(0) for k in range(num_classes)])
        centred = f - means[labels]
        cov = centred.T @ centred / len(f)
        return cls(means, torch.linalg.pinv(cov, hermitian=True))

    def score(self, features: Tensor) -> Tensor:
        """(N, D) -> (N,) squared distance to the closest class mean."""
        d = features.double()[:, None, :] - self.means[None]  # (N, K, D)
        m = torch.einsum("nkd,de,nke->nk", d, self.precision, d)  # (N, K)
        return m.min(1).values.float()
