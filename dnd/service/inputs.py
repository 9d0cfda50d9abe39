"""Request bodies -> image tensors. The body is read on the event loop (bounded in size and time); everything that
costs CPU (JSON parsing, base64, multipart parsing, image decoding and resizing) runs in the decode threads, so a
request of 64 large images never holds up /healthz or other requests' I/O.

Accepted bodies: one image as multipart (field `file`), a raw body with an image content type (or
application/octet-stream), or JSON {"images": ["<base64>", ...]}.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from typing import Any

import torch
from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from detector.images import decode_base64, decode_image

from .errors import ApiError
from .settings import Settings

MAX_PARTS = 10


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` (header first, then stream) and
    with 408 if it has not arrived within `timeout` seconds."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "body_too_large", f"expected a body of at most {limit} bytes, found Content-Length {declared}"
        )
    chunks, n = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                n += len(chunk)
                if n > limit:
                    raise ApiError(
                        413, "body_too_large", f"expected a body of at most {limit} bytes; stopped reading at {n}"
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, "body_timeout", f"expected the whole body within {timeout:g} s; received {n} bytes"
        ) from None
    return b"".join(chunks)


def load_json(body: bytes) -> Any:
    """json.loads that answers every malformed document with 422 (deep nesting, 4,300+ digit integers, NaN /
    Infinity, bad UTF-8 included) instead of an exception the server did not expect."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(body, parse_constant=no_constant)
    except RecursionError:
        raise ApiError(422, "invalid_json", "malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError, so is the int digit limit
        raise ApiError(422, "invalid_json", f"malformed JSON: {e}") from None


def multipart_file(body: bytes, content_type: str) -> tuple[bytes, str]:
    """(data, content type) of the multipart part named `file`; 400 if the body is not complete multipart."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "invalid_multipart", "expected a multipart/form-data content type with a boundary")
    parts: list[tuple[dict[bytes, bytes], list[bytes]]] = []
    field: list[bytes] = [b""]
    ended = []

    def header_value(d: bytes, s: int, e: int) -> None:
        key = field[0].lower()
        parts[-1][0][key] = parts[-1][0].get(key, b"") + d[s:e]

    def field_part(d: bytes, s: int, e: int) -> None:
        field[0] += d[s:e]

    def begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise ApiError(400, "invalid_multipart", f"expected at most {MAX_PARTS} parts")
        parts.append(({}, []))

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": field_part,
        "on_header_value": header_value,
        "on_header_end": lambda: field.__setitem__(0, b""),
        "on_part_data": lambda d, s, e: parts[-1][1].append(d[s:e]),
        "on_end": lambda: ended.append(True),
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except MultipartParseError as e:
        raise ApiError(400, "invalid_multipart", f"could not parse the multipart body: {e}") from None
    if not ended:
        raise ApiError(400, "invalid_multipart", "the multipart body ends before its closing boundary")
    names = []
    for headers, data in parts:
        _, opts = parse_options_header(headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("latin-1")
        names.append(name)
        if name == "file":
            return b"".join(data), headers.get(b"content-type", b"").decode("latin-1").lower()
    raise ApiError(422, "missing_file", f"expected a multipart file field named `file`, found fields {names}")


def _is_image_type(ctype: str) -> bool:
    return ctype.startswith("image/") or ctype == "application/octet-stream"


def parse_payload(
    content_type: str, body: bytes, s: Settings, size: int
) -> tuple[torch.Tensor, list[list[int] | None]]:
    """The decode threads' part: body -> ((n, 3, size, size) float in [0, 1], per image its original size if
    resized)."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        data, ftype = multipart_file(body, content_type)
        if ftype and not _is_image_type(ftype):
            raise ApiError(415, "unsupported_media_type", f"expected an image file, found content type {ftype}")
        raws = [data]
    elif _is_image_type(ctype):
        raws = [body]
    elif ctype == "application/json":
        doc = load_json(body)
        imgs = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(imgs, list) or not imgs:
            raise ApiError(422, "invalid_json", 'expected {"images": [<base64 image>, ...]} with at least one image')
        if len(imgs) > s.max_images:
            raise ApiError(
                413, "too_many_images", f"expected at most {s.max_images} images per request, found {len(imgs)}"
            )
        raws = [decode_base64(v, i) for i, v in enumerate(imgs)]
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"expected an image/* body, multipart/form-data or application/json, found {ctype or 'no content type'}",
        )
    decoded = [decode_image(r, s.max_image_pixels, size) for r in raws]  # one at a time: one decoded image in memory
    return torch.stack([x for x, _ in decoded]), [r for _, r in decoded]


async def parse_images(
    request: Request, s: Settings, pool: Executor, size: int
) -> tuple[torch.Tensor, list[list[int] | None]]:
    """Read the body here, parse and decode it in `pool`, images resized to size x size (the served network's)."""
    body = await read_body(request, s.body_limit, s.body_timeout_s)
    if not body:
        raise ApiError(
            400,
            "empty_body",
            "expected an image (raw, multipart field `file`, or JSON base64 list), found an empty body",
        )
    ctype = request.headers.get("content-type", "")
    return await asyncio.get_running_loop().run_in_executor(pool, parse_payload, ctype, body, s, size)
