"""What `Detector.predict` returns, and the check every image batch passes before it: float (N, 3, S, S) in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Prediction:
    labels: Tensor  # (N,) int64 predicted class
    probs: Tensor  # (N, K) softmax probabilities
    scores: Tensor  # (N,) `path` attack score (higher = more likely attacked)
    is_adversarial: Tensor  # (N,) bool: scores > threshold
    per_layer: Tensor  # (N, L) Hamming distance of each layer's path to the predicted class's signature
    per_layer_jaccard: Tensor  # (N, L) Jaccard distance, same layout
    paths: list[Tensor]  # L x (N, C_l) bool: the calculation path (open filters)
    features: Tensor  # (N, D) penultimate features (for the Mahalanobis baseline)
    logits: Tensor  # (N, K)
    gate_logits: list[Tensor]  # L x (N, C_l) float: the gates' logits s, z = 1(s > 0)
    inputs: Tensor  # (N, F) what the scorer read: path features, then the profiles' consistency / confidence columns

    def __getitem__(self, rows: slice | Tensor) -> Prediction:
        """The Prediction of some of its images: a slice, an index or a boolean mask over N."""

        def take(v: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
            return [layer[rows] for layer in v] if isinstance(v, list) else v[rows]

        return Prediction(**{f.name: take(getattr(self, f.name)) for f in fields(Prediction)})

    @staticmethod
    def concat(parts: list[Prediction]) -> Prediction:
        """Rows of several Predictions, in order."""

        def cat(name: str) -> Tensor | list[Tensor]:
            values = [getattr(p, name) for p in parts]
            return [torch.cat(layer) for layer in zip(*values)] if isinstance(values[0], list) else torch.cat(values)

        return Prediction(**{f.name: cat(f.name) for f in fields(Prediction)})


def check_images(x: Tensor, size: int) -> None:
    """Refuse anything but float images (N, 3, size, size) in [0, 1] with an error naming what was found (TypeError or
    ValueError). `Detector.predict` calls it; the service calls it per request, before the images join a batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (N, 3, {size}, {size}), found {type(x).__name__}")
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(f"expected images of shape (N, 3, {size}, {size}), found {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], found dtype {x.dtype} (divide uint8 images by 255)")
    if len(x):
        lo, hi = (float(v) for v in torch.aminmax(x))  # one pass; NaN propagates into both and fails the test
        if not (lo >= 0 and hi <= 1):
            nan = int(torch.isnan(x).sum()) if lo != lo or hi != hi else 0  # counted only on the error path
            found = f"{nan} NaN value(s)" if nan else f"range [{lo:.9g}, {hi:.9g}]"  # 1.0000001 must not print as 1
            raise ValueError(f"expected values in [0, 1], found {found}")
