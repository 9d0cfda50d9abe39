"""Data augmentation on batches already on the device: random crop (4-pixel zero padding) + mirror, and Cutout.

The random draws come from the run's seeded CPU generator, so a resumed run repeats them on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_flip_params(b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random augmentation draws for b images: crop offsets (b, 2) in [0, 8] and mirror flags (b,) bool."""
    ij = torch.randint(0, 9, (b, 2), generator=gen)
    return ij, torch.rand(b, generator=gen) < 0.5


def augment(xb: torch.Tensor, ij: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """32x32 crops at offsets ij (B, 2) of the 4-pixel zero-padded images xb (B, 3, 32, 32), mirrored where flip (B,).
    One gather on xb's device (a per-image slicing loop cost ~1.5 ms of host time per step, which a GPU waits for);
    a mirrored crop is the crop's columns in reverse order."""
    dev, b = xb.device, xb.shape[0]
    padded = F.pad(xb, (4, 4, 4, 4))
    ar = torch.arange(32, device=dev)
    ij, flip = ij.to(dev, non_blocking=True), flip.to(dev, non_blocking=True)
    rows, cols = ij[:, :1] + ar, ij[:, 1:] + ar  # (B, 32) each
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(b, device=dev)[:, None, None, None],
        torch.arange(3, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def cutout_params(b: int, gen: torch.Generator) -> torch.Tensor:
    """Cutout centres (b, 2) in [0, 31], drawn from the run's seeded generator (as crop_flip_params)."""
    return torch.randint(0, 32, (b, 2), generator=gen)


def cutout(xb: torch.Tensor, centre: torch.Tensor, size: int) -> torch.Tensor:
    """xb (B, C, S, S) with the size x size square at each image's centre (B, 2) set to 0, clipped at the border.
    The square spans rows centre - size // 2 ... centre - size // 2 + size - 1 (DeVries & Taylor 2017)."""
    lo = centre.to(xb.device)[:, :, None] - size // 2  # (B, 2, 1): first row / column of the square
    ar = torch.arange(xb.shape[-1], device=xb.device)
    inside = (ar >= lo) & (ar < lo + size)  # (B, 2, S): rows / columns the square covers
    keep = ~(inside[:, 0, :, None] & inside[:, 1, None, :])  # (B, S, S)
    return xb * keep[:, None].to(xb.dtype)
