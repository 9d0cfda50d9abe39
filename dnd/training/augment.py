"""Data augmentation on batches already on the device: random crop (zero padding of an eighth of the side: 4 pixels
at 32 x 32) + mirror, and Cutout.

The random draws come from the run's seeded CPU generator, so a resumed run repeats them on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_pad(size: int) -> int:
    """The crop's zero padding for size x size images: 4 pixels at CIFAR's 32."""
    return max(size // 8, 1)


def crop_flip_params(b: int, gen: torch.Generator, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Random augmentation draws for b images of side `size`: crop offsets (b, 2) in [0, 2 * pad] and mirror flags
    (b,) bool."""
    ij = torch.randint(0, 2 * crop_pad(size) + 1, (b, 2), generator=gen)
    return ij, torch.rand(b, generator=gen) < 0.5


def augment(xb: torch.Tensor, ij: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """S x S crops at offsets ij (B, 2) of the zero-padded images xb (B, 3, S, S), mirrored where flip (B,).
    One gather on xb's device (a per-image slicing loop cost ~1.5 ms of host time per step, which a GPU waits for);
    a mirrored crop is the crop's columns in reverse order."""
    dev, b, size = xb.device, xb.shape[0], xb.shape[-1]
    pad = crop_pad(size)
    padded = F.pad(xb, (pad, pad, pad, pad))
    ar = torch.arange(size, device=dev)
    ij, flip = ij.to(dev, non_blocking=True), flip.to(dev, non_blocking=True)
    rows, cols = ij[:, :1] + ar, ij[:, 1:] + ar  # (B, S) each
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[
        torch.arange(b, device=dev)[:, None, None, None],
        torch.arange(3, device=dev)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


def cutout_params(b: int, gen: torch.Generator, size: int = 32) -> torch.Tensor:
    """Cutout centres (b, 2) in [0, size - 1], drawn from the run's seeded generator (as crop_flip_params)."""
    return torch.randint(0, size, (b, 2), generator=gen)


def cutout(xb: torch.Tensor, centre: torch.Tensor, size: int) -> torch.Tensor:
    """xb (B, C, S, S) with the size x size square at each image's centre (B, 2) set to 0, clipped at the border.
    The square spans rows centre - size // 2 ... centre - size // 2 + size - 1 (DeVries & Taylor 2017)."""
    lo = centre.to(xb.device)[:, :, None] - size // 2  # (B, 2, 1): first row / column of the square
    ar = torch.arange(xb.shape[-1], device=xb.device)
    inside = (ar >= lo) & (ar < lo + size)  # (B, 2, S): rows / columns the square covers
    keep = ~(inside[:, 0, :, None] & inside[:, 1, None, :])  # (B, S, S)
    return xb * keep[:, None].to(xb.dtype)
