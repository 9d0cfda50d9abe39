"""Clean but shifted images: common corruptions, with torchvision's functional transforms.

`CORRUPTIONS` are the evaluation's fixed shifts at a moderate severity, the middle (3 of 5) of CIFAR-10-C
(Hendrycks & Dietterich 2019) where the transform is the same: Gaussian noise sigma 0.08, Gaussian blur sigma 1, JPEG
quality 20, brightness x1.3, contrast x0.4, saturation x2 and pixelation; and, held out of every recipe choice
(`dnd select` never sees them): speckle noise, sharpening, a zoom, and the ordinary changes a photograph meets on
its way to a classifier: greyscale, JPEG re-compression at quality 50, a hue shift, a gamma curve, histogram
equalisation and a small rotation.
`random_corruptions` is the calibration's generic augmentation of clean images (one of `AUGMENT` per image, at a
random strength): negatives that teach the scorer that a noisy, blurred or recoloured photograph is not an attack.
Every output is an image in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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


def hue(x: Tensor, shift: float) -> Tensor:
    """Hue rotated by `shift` of a full turn (-0.5 to 0.5)."""
    return _v2().adjust_hue(x, shift).clamp(0, 1)


def speckle(x: Tensor, sigma: float, seed: int = 0) -> Tensor:
    """Multiplicative noise x (1 + sigma n), CIFAR-10-C's speckle noise."""
    g = torch.Generator().manual_seed(seed)
    return (x + x * sigma * torch.randn(x.shape, generator=g)).clamp(0, 1)


def sharpen(x: Tensor, factor: float) -> Tensor:
    return _v2().adjust_sharpness(x, factor).clamp(0, 1)


def zoom(x: Tensor, crop: float) -> Tensor:
    """The centre `crop` of the side, resized back: the object framed closer."""
    f, side = _v2(), x.shape[-1]
    return f.resize(f.center_crop(x, [round(side * crop)] * 2), list(x.shape[-2:]), antialias=True).clamp(0, 1)


def greyscale(x: Tensor) -> Tensor:
    """A black-and-white photograph: ITU-R 601 luma (Pillow's "L") in all three channels."""
    return _v2().rgb_to_grayscale(x, num_output_channels=3).clamp(0, 1)


def gamma(x: Tensor, g: float) -> Tensor:
    return _v2().adjust_gamma(x, g).clamp(0, 1)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per channel (an "auto" photo fix), on the 8-bit image."""
    return _v2().equalize((x * 255).round().to(torch.uint8)).float() / 255


def rotate(x: Tensor, degrees: float) -> Tensor:
    """Rotated about the centre (bilinear), the corners filled black."""
    return _v2().rotate(x, degrees, interpolation=_v2().InterpolationMode.BILINEAR).clamp(0, 1)


class Shift(NamedTuple):
    fn: Callable[[Tensor], Tensor]
    what: str
    kind: str  # the AUGMENT_KINDS entry that covers it ("" = none does)
    in_selection: bool  # weighed by `dnd select`'s limit on flagged shifted images; False = held out of every choice


CORRUPTIONS: dict[str, Shift] = {
    "gaussian_noise": Shift(lambda x: noise(x, 0.08), "additive Gaussian noise, sigma 0.08", "noise", True),
    "gaussian_blur": Shift(lambda x: blur(x, 1.0), "Gaussian blur, sigma 1 (5 x 5 kernel)", "blur", True),
    "jpeg": Shift(lambda x: jpeg(x, 20), "JPEG re-compression at quality 20", "jpeg", True),
    "brightness": Shift(lambda x: brightness(x, 1.3), "brightness x 1.3", "brightness", True),
    "contrast": Shift(lambda x: contrast(x, 0.4), "contrast x 0.4", "contrast", True),
    "pixelate": Shift(lambda x: pixelate(x, x.shape[-1] // 2), "pixelation (half the side, then back)", "", True),
    "saturate": Shift(lambda x: saturate(x, 2.0), "saturation x 2", "saturation", True),
    "speckle_noise": Shift(lambda x: speckle(x, 0.12), "multiplicative (speckle) noise, sigma 0.12", "", False),
    "sharpen": Shift(lambda x: sharpen(x, 3.0), "sharpness x 3", "", False),
    "zoom": Shift(lambda x: zoom(x, 0.875), "zoom: the centre 7/8 resized back", "", False),
    "greyscale": Shift(greyscale, "greyscale (a black-and-white photograph)", "saturation", False),
    "jpeg50": Shift(lambda x: jpeg(x, 50), "JPEG re-compression at quality 50", "jpeg", False),
    "hue": Shift(lambda x: hue(x, 0.05), "hue rotated by 0.05 of a turn", "hue", False),
    "gamma": Shift(lambda x: gamma(x, 0.7), "gamma 0.7 (mid-tones brighter)", "", False),
    "equalize": Shift(equalize, "histogram equalisation", "", False),
    "rotate": Shift(lambda x: rotate(x, 10.0), "rotation by 10 degrees", "", False),
}
SELECTION_CORRUPTIONS = tuple(k for k, v in CORRUPTIONS.items() if v.in_selection)


def corrupt(name: str, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Images x (N, 3, H, W) in [0, 1] under corruption `name`, in [0, 1]."""
    fn = CORRUPTIONS[name].fn
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]) if len(x) else x


# The calibration's augmentation of clean images: kind -> (image, u in [0, 1)) -> image, its strength drawn from u.
# BASE_AUGMENT is the first five; COLOUR_JITTER_AUGMENT adds saturation and hue, completing torchvision's ColorJitter.
AUGMENT: dict[str, tuple[Callable[[Tensor, float], Tensor], str]] = {
    "noise": (lambda x, u: noise(x, 0.01 + 0.11 * u), "Gaussian noise sigma 0.01-0.12"),
    "blur": (lambda x, u: blur(x, 0.5 + u), "blur sigma 0.5-1.5"),
    "jpeg": (lambda x, u: jpeg(x, int(10 + 80 * u)), "JPEG quality 10-90"),
    "brightness": (lambda x, u: brightness(x, 0.6 + 0.8 * u), "brightness x0.6-1.4"),
    "contrast": (lambda x, u: contrast(x, 0.3 + 0.7 * u), "contrast x0.3-1.0"),
    "saturation": (lambda x, u: saturate(x, 2.5 * u), "saturation x0-2.5 (grey to vivid)"),
    "hue": (lambda x, u: hue(x, 0.2 * u - 0.1), "hue rotated -0.1 to 0.1 of a turn"),
}
AUGMENT_KINDS = tuple(AUGMENT)
BASE_AUGMENT, COLOUR_JITTER_AUGMENT = AUGMENT_KINDS[:5], AUGMENT_KINDS


def random_corruptions(x: Tensor, seed: int = 0, kinds: tuple[str, ...] = BASE_AUGMENT) -> Tensor:
    """Each image of x under one of `kinds` (AUGMENT) drawn at random, at a random strength (seeded)."""
    bad = [k for k in kinds if k not in AUGMENT]
    if bad or not kinds:
        raise ValueError(f"augmentation kinds: expected some of {', '.join(AUGMENT_KINDS)}, got {list(kinds)}")
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, len(kinds), (len(x),), generator=g)
    u = torch.rand(len(x), generator=g)
    out = x.clone()
    for k, name in enumerate(kinds):
        idx = torch.nonzero(kind == k).flatten()
        if not len(idx):
            continue
        xs, us = x[idx], u[idx]
        if name == "noise":  # one call: a per-image sigma
            out[idx] = noise(xs, 0.01 + 0.11 * us, seed)
        else:
            fn = AUGMENT[name][0]
            out[idx] = torch.cat([fn(xs[i : i + 1], float(us[i])) for i in range(len(idx))])
    return out
