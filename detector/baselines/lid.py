"""Local intrinsic dimensionality, LID (Ma et al. 2018): per layer, the maximum-likelihood LID estimate of each image's
activation among its k nearest neighbours in a fixed batch of clean reference images,

    LID(x) = -( (1/k) sum_i log(r_i(x) / r_k(x)) )^-1,

r_i the distance to the i-th nearest reference activation (flattened maps). A logistic regression over the per-layer
estimates (baselines.combiner.LogisticCombiner), fitted on clean and attacked images, is the score. A fixed reference
batch (rather than each test minibatch, as in the paper) makes an image's score independent of what it is batched
with."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..networks import GatedNetwork
from .activations import layer_activations


@dataclass
class LID:
    reference: list[Tensor]  # L x (R, D_l): flattened activations of R clean reference images
    k: int = 20

    @classmethod
    def fit_reference(cls, model: GatedNetwork, x_ref: Tensor, k: int = 20) -> LID:
        """Reference activations of clean images x_ref (R, 3, S, S); R > k."""
        _, acts = layer_activations(model, x_ref)
        return cls([a.flatten(1).float() for a in acts], k)

    def estimates(self, model: GatedNetwork, x: Tensor, batch_size: int = 250) -> np.ndarray:
        """Images x -> (N, L) per-layer LID estimates."""
        out = []
        for i in range(0, len(x), batch_size):
            _, acts = layer_activations(model, x[i : i + batch_size])
            cols = []
            for a, ref in zip(acts, self.reference):
                r = torch.cdist(a.flatten(1).float(), ref).topk(self.k, largest=False).values.clamp_min(1e-12)
                cols.append(-1.0 / torch.log(r / r[:, -1:]).mean(1).clamp_max(-1e-12))
            out.append(torch.stack(cols, 1))
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.reference)))
