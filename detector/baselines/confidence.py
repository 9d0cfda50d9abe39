"""Confidence baselines on the logits, as pytorch-ood defines them (higher = more suspicious)."""

from __future__ import annotations

from torch import Tensor


def msp_score(logits: Tensor) -> Tensor:
    """(N, K) logits -> (N,) negative max softmax probability (Hendrycks & Gimpel 2017)."""
    from pytorch_ood.detector import MaxSoftmax

    return MaxSoftmax.score(logits)


def energy_score(logits: Tensor) -> Tensor:
    """(N, K) logits -> (N,) energy -logsumexp(logits) (Liu et al. 2020, T = 1)."""
    from pytorch_ood.detector import EnergyBased

    return EnergyBased.score(logits)
