"""Mahalanobis detectors (Lee et al. 2018) with pytorch-ood's class-conditional Gaussian (tied covariance):
on the penultimate features alone (unsupervised), and the feature ensemble's per-layer distances (supervised, with
baselines.combiner.LogisticCombiner)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def _gaussian(features: Tensor, labels: Tensor):
    from pytorch_ood.detector import Mahalanobis as Gaussian

    return Gaussian(None).fit_features(features.float(), labels)  # its Gaussian is float32 whatever the input


@dataclass
class Mahalanobis:
    """Squared Mahalanobis distance to the closest class mean (penultimate features; higher = more suspicious)."""

    gaussian: object

    @classmethod
    def fit(cls, features: Tensor, labels: Tensor) -> Mahalanobis:
        """Training features (N, D) of correctly classified images and their labels (N,)."""
        return cls(_gaussian(features, labels))

    def score(self, features: Tensor) -> Tensor:
        """(N, D) -> (N,)."""
        return self.gaussian.predict_features(features.float())


@dataclass
class MahalanobisEnsemble:
    """One Gaussian per layer (pooled activations); the L per-layer distances go to a LogisticCombiner."""

    gaussians: list[object]

    @classmethod
    def fit(cls, layers: list[Tensor], labels: Tensor) -> MahalanobisEnsemble:
        """Per layer pooled training activations L x (N, C_l) and labels (N,): the Gaussians."""
        return cls([_gaussian(f, labels) for f in layers])

    def distances(self, layers: list[Tensor]) -> np.ndarray:
        """L x (N, C_l) -> (N, L) per-layer distances."""
        return torch.stack([g.predict_features(f.float()) for g, f in zip(self.gaussians, layers)], 1).numpy()
