"""Encoded images -> model input tensors, for the CLI and the service.

Accepted formats are an explicit list (`FORMATS`): Pillow opens nothing else (no EPS through Ghostscript, no ICO,
TGA or PCX). Every image becomes the RGB a person would see:
- EXIF orientation is applied (a phone photo stored sideways is classified upright);
- 16-bit and 32-bit integer images are scaled by their bit depth (0-65535 -> 0-255; a 32-bit one whose values exceed
  16 bits by 2^31 - 1), float images taken as [0, 1] when they lie in it, else as 0-255 (clipped): Pillow's own RGB
  conversion clips them to 255 (all white) or truncates them (all black);
- transparent pixels (alpha, or a palette / greyscale transparency key) are composited on white (`BACKGROUND`), the
  page colour a browser shows them on, instead of being classified on their hidden RGB.
Images that are not S x S (the network's input size, 32 for the CIFAR bundles) are then resized to it
(`resize_square`): by area averaging (Pillow's box filter) when no side grows, bicubic when one does; the caller
reports the original size.

Every failure is an `ImageError` with a stable `code`; the service maps codes to HTTP statuses.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
BACKGROUND = (255, 255, 255)


class ImageError(ValueError):
    """Bad input image. `code`: empty_body, not_an_image, corrupt_image, image_too_large, invalid_base64 or
    invalid_json."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _scaled_to_8bit(im: Image.Image) -> Image.Image:
    """A 16/32-bit integer or float single-channel image as 8-bit greyscale "L", scaled by its depth (module doc)."""
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        a = np.nan_to_num(a, nan=0.0, posinf=1.0 if hi <= 1 else 255.0, neginf=0.0)
        a = a * 255 if lo >= 0 and hi <= 1 else a
    else:
        a = a.astype(np.float64)
        a = a / 257 if a.min(initial=0) >= 0 and a.max(initial=0) <= 65535 else a * (255 / (2**31 - 1))
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any accepted mode -> "RGB" as displayed: wide modes scaled, transparency composited on BACKGROUND."""
    if im.mode in ("I", "F") or im.mode.startswith("I;"):
        im = _scaled_to_8bit(im)
    transparent = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if not transparent:
        return im.convert("RGB")
    rgba = im.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")


def resample_filter(width: int, height: int, size: int) -> Image.Resampling:
    """The filter that brings a width x height image to size x size. Shrinking: the box filter, each output pixel the
    area-weighted mean of the input pixels it covers. It is the exact inverse of an integer nearest-neighbour
    enlargement and blurs less than the bilinear tent: on clean images sent 2x or 4x larger (bicubic, bilinear or
    nearest), it keeps more of the network's accuracy (`tests/service/test_inputs.py` checks it on real images).
    Growing (a side under S): bicubic, which keeps more than bilinear or the box's nearest-neighbour blocks."""
    return Image.Resampling.BOX if min(width, height) >= size else Image.Resampling.BICUBIC


def resize_square(im: Image.Image, size: int) -> Image.Image:
    """im resized to size x size with `resample_filter`: the service's resize, and the data loader's at a given size."""
    return im if im.size == (size, size) else im.resize((size, size), resample_filter(*im.size, size))


def decode_image(data: bytes, max_pixels: int, size: int) -> tuple[Tensor, list[int] | None]:
    """Encoded image bytes -> ((3, size, size) float in [0, 1], original [width, height] if resized else None)."""
    if not data:
        raise ImageError("empty_body", "expected an image, found an empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = im.size
            if w * h > max_pixels or w < 1 or h < 1:  # on the header, before any pixel is decoded
                raise ImageError("image_too_large", f"expected at most {max_pixels} pixels, found {w} x {h}")
            im.load()
            im = to_rgb(ImageOps.exif_transpose(im))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            "image_too_large", f"expected at most {max_pixels} pixels (decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            "not_an_image", f"expected an image in one of {', '.join(FORMATS)}; the bytes are none of these"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:  # truncated or corrupt data
        raise ImageError("corrupt_image", f"the image could not be decoded: {e}") from None
    resized = None
    if im.size != (size, size):
        resized = [w, h]
        im = resize_square(im, size)
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return x, resized


def decode_base64(s: object, index: int) -> bytes:
    """One entry of a JSON {"images": [...]} list: base64 (or a data URL) -> bytes."""
    if not isinstance(s, str):
        raise ImageError("invalid_json", f"images[{index}]: expected a base64 string, found {type(s).__name__}")
    if s.startswith("data:") and "," in s:  # data URL
        s = s.split(",", 1)[1]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError("invalid_base64", f"images[{index}]: not valid base64 ({e})") from None
