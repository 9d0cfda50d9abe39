"""Clean but shifted images: common corruptions, with torchvision's functional transforms.

`CORRUPTIONS` are the evaluation's fixed corruptions at a moderate severity, the middle (3 of 5) of CIFAR-10-C
(Hendrycks & Dietterich 2019) where the transform is the same: Gaussian noise sigma 0.08, Gaussian blur sigma 1, JPEG
quality 20, brightness x1.3, contrast x0.4; and two kinds the calibration never applies (pixelation, saturation).
`random_corruptions` is the calibration's generic augmentation of clean images (one of noise, blur, JPEG,
brightness, contrast per image, at a random strength): negatives that teach the scorer that a noisy or blurred
photograph is not an attack. Every output is an image in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _v2():  # torchvision.transforms.v2.functional, imported when a corruption is applied
    from torchvision.transforms.v2 import functional

    return functional


def noise(x: Tensor, sigma: float | Tensor, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = sigma.view(-1, 1, 1, 1) if isinstance(sigma, Tensor) else sigma
    return (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)


def blur(x: Tensor, sigma: float) -> Tensor:
    return _v2().gaussian_blur(x, kernel_size=[5, 5], sigma=[sigma, sigma]).clamp(0, 1)  # rounding can pass 1


def jpeg(x: Tensor, quality: int) -> Tensor:
    """Each image saved and read back as JPEG at `quality` (Pillow; torchvision's own codec is deprecated)."""
    import io

    import numpy as np
    from PIL import Image

    out = []
    for img in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=quality)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy()))
    return torch.stack(out).permute(0, 3, 1, 2).float() / 255 if out else x


def brightness(x: Tensor, factor: float) -> Tensor:
    return _v2().adjust_brightness(x, factor).clamp(0, 1)


def contrast(x: Tensor, factor: float) -> Tensor:
    return _v2().adjust_contrast(x, factor).clamp(0, 1)


def pixelate(x: Tensor, size: int = 16) -> Tensor:
    f = _v2()
    return f.resize(f.resize(x, [size, size], antialias=True), list(x.shape[-2:]), antialias=False).clamp(0, 1)


def saturate(x: Tensor, factor: float = 2.0) -> Tensor:
    return _v2().adjust_saturation(x, factor).clamp(0, 1)


CORRUPTIONS: dict[str, tuple[Callable[[Tensor], Tensor], str, bool]] = {  # fn, description, in the fit's augmentation
    "gaussian_noise": (lambda x: noise(x, 0.08), "additive Gaussian noise, sigma 0.08", True),
    "gaussian_blur": (lambda x: blur(x, 1.0), "Gaussian blur, sigma 1 (5 x 5 kernel)", True),
    "jpeg": (lambda x: jpeg(x, 20), "JPEG re-compression at quality 20", True),
    "brightness": (lambda x: brightness(x, 1.3), "brightness x 1.3", True),
    "contrast": (lambda x: contrast(x, 0.4), "contrast x 0.4", True),
    "pixelate": (lambda x: pixelate(x, x.shape[-1] // 2), "pixelation (half the side, then back)", False),
    "saturate": (lambda x: saturate(x, 2.0), "saturation x 2", False),
}


def corrupt(name: str, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Images x (N, 3, H, W) in [0, 1] under corruption `name`, in [0, 1]."""
    fn = CORRUPTIONS[name][0]
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else x


def random_corruptions(x: Tensor, seed: int = 0) -> Tensor:
    """Each image of x under one corruption drawn at random (seeded): Gaussian noise sigma 0.01-0.12, blur sigma
    0.5-1.5, JPEG quality 10-90, brightness x0.6-1.4 or contrast x0.3-1.0."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 5, (len(x),), generator=g)
    u = torch.rand(len(x), generator=g)
    out = x.clone()
    for k in range(5):
        idx = torch.nonzero(kind == k).flatten()
        if not len(idx):
            continue
        xs, us = x[idx], u[idx]
        if k == 0:
            out[idx] = noise(xs, 0.01 + 0.11 * us, seed)
        else:
            out[idx] = torch.cat([_one(k, xs[i : i + 1], float(us[i])) for i in range(len(idx))])
    return out


def _one(kind: int, x: Tensor, u: float) -> Tensor:
    if kind == 1:
        return blur(x, 0.5 + u)
    if kind == 2:
        return jpeg(x, int(10 + 80 * u))
    if kind == 3:
        return brightness(x, 0.6 + 0.8 * u)
    return contrast(x, 0.3 + 0.7 * u)
