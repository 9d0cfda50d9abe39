"""The served score's inputs: the path features, then the consistency and confidence columns the profiles ask for.

One stacked forward (detector/consistency.py: x and its transforms) gives everything; `score_inputs` turns its
outputs into the (N, F) matrix the scorer reads. The detector, the calibration and the evaluation all call it, so
the features the scorer was fitted on are the features it is served.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .consistency import FeatureSpec, extra_features, run_stacked, stack
from .data import to_unit_float
from .features import PathLikelihood, path_features
from .profiles import PathProfiles

# Stacked rows (images x (1 + transforms)) per forward when scoring many images. On 2 CPU cores a ResNet-20 scored
# 2,048 images 2.1x faster in chunks of 384 rows than of 1,536 (the activations of a big chunk outgrow the caches)
# and 1.1x faster than in chunks of 192 or 498; a VGG-19 cost the same from 48 to 768 rows
# (`python bench/scoring.py --chunks 64,128,166,256,512`).
STACKED_ROWS = 384


def images_per_chunk(spec: FeatureSpec, rows: int = STACKED_ROWS) -> int:
    """Images per forward such that the stacked batch holds about `rows` rows."""
    return max(1, rows // (1 + len(spec.transforms)))


@dataclass
class StackedOutput:
    """One forward of N images stacked with their transforms: rows :N are the images themselves."""

    n: int
    logits: Tensor  # (N (1 + T), K)
    features: Tensor  # (N (1 + T), D) penultimate
    z: list[Tensor]  # L x (N (1 + T), C_l), binary at eval (float or bool), soft under relaxed gates
    s: list[Tensor]  # L x (N (1 + T), C_l) gate logits
    x: Tensor | None = None  # (N, 3, H, W) the images themselves, which the residual columns read


def score_inputs(
    out: StackedOutput,
    profiles: PathProfiles,
    labels: Tensor | None = None,
    signatures: list[Tensor] | None = None,
    likelihood: PathLikelihood | None = None,
) -> Tensor:
    """(N, F) scorer inputs for the N images of `out`, judged against the profiles of `labels` (default: their
    predicted classes). Path features (detector/features.py), then profiles.spec's extra columns."""
    n = out.n
    lab = out.logits[:n].argmax(1) if labels is None else labels
    gm = profiles.gate_mean
    path = path_features(
        [zl[:n] for zl in out.z],
        lab,
        profiles.freq,
        signatures,
        likelihood,
        [sl[:n] for sl in out.s] if gm is not None else None,
        gm,
    )
    spec = profiles.spec
    if not spec.transforms and not spec.confidence and not spec.residual:
        return path
    extra = extra_features(spec, out.z, out.s, out.logits, out.features, n, lab.to(out.logits.device), out.x)
    return torch.cat([path, extra.to(path)], 1)


def forward_stacked(model: torch.nn.Module, x: Tensor, spec: FeatureSpec, bpda: bool = False) -> StackedOutput:
    """model.forward_paths on x (N, 3, H, W) stacked with its spec transforms."""

    def forward(xs: Tensor) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        o = model.forward_paths(xs)
        return o.logits, o.features, o.z, o.s

    logits, features, z, s = run_stacked(forward, stack(x, spec, bpda), len(x), spec)
    return StackedOutput(len(x), logits, features, z, s, x)


@torch.inference_mode()
def inputs_of_images(
    model: torch.nn.Module,
    profiles: PathProfiles,
    x: Tensor,
    rows: int = STACKED_ROWS,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """Eval-mode logits (N, K) and scorer inputs (N, F) of uint8 or [0, 1] images x, in batches of about `rows`
    stacked rows."""
    model.eval()
    batch_size = images_per_chunk(profiles.spec, rows)
    logits, inputs = [], []
    for i in range(0, max(len(x), 1), batch_size):  # one empty batch for empty x: (0, K), (0, F)
        xb = to_unit_float(x[i : i + batch_size]).to(device)
        out = forward_stacked(model, xb, profiles.spec)
        out.z = [zl.bool() for zl in out.z]
        logits.append(out.logits[: out.n].float().cpu())
        inputs.append(score_inputs(out, profiles).float().cpu())
    return torch.cat(logits), torch.cat(inputs)
