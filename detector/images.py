"""Encoded images -> model input tensors, for the CLI and the service. Every failure is an InputError carrying the
HTTP status a service should answer with (the service turns it into its JSON error).

Images that are not 32 x 32 are converted to RGB and resized to 32 x 32 with Pillow's bilinear filter
(`Image.Resampling.BILINEAR`, with Pillow's antialiasing when shrinking); the response reports the original size.
"""
from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

SIZE = 32


class InputError(ValueError):
    """Bad input: `status` (HTTP), `code` (stable, machine-readable) and a message saying what was expected."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def decode_image(data: bytes, max_pixels: int) -> tuple[Tensor, list[int] | None]:
    """Encoded image bytes -> ((3, 32, 32) float in [0, 1], original [width, height] if resized else None)."""
    if not data:
        raise InputError(400, "empty_body", "expected an image, found an empty body")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels or w < 1 or h < 1:  # checked on the header, before any pixel is decoded
                raise InputError(413, "image_too_large", f"expected at most {max_pixels} pixels, found {w} x {h}")
            im.load()
            im = im.convert("RGB")
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(413, "image_too_large", f"image refused as a decompression bomb: {e}") from None
    except UnidentifiedImageError:
        raise InputError(415, "not_an_image", "expected a PNG, JPEG, BMP, GIF, TIFF or WebP image; the bytes are none of these") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise InputError(400, "corrupt_image", f"the image could not be decoded: {e}") from None
    resized = None
    if im.size != (SIZE, SIZE):
        resized = [w, h]
        im = im.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    return x, resized


def decode_base64(s: object, index: int) -> bytes:
    if not isinstance(s, str):
        raise InputError(422, "invalid_json", f"images[{index}]: expected a base64 string, found {type(s).__name__}")
    if s.startswith("data:") and "," in s:  # data URL
        s = s.split(",", 1)[1]
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(400, "invalid_base64", f"images[{index}]: not valid base64 ({e})") from None
