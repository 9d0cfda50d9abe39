"""Open Inference Protocol v2 bodies, JSON and binary: the request parsed into images and the outputs asked for,
the outputs encoded into a response body. Pure functions; the router runs them in the decode threads.

Binary tensor data extension: a request (or response) whose `Inference-Header-Content-Length` header is L carries
its JSON header in the first L bytes of the body and, after it, the raw little-endian bytes of every tensor whose
`parameters.binary_data_size` is set, in the order of the tensors. A response carries an output in binary when the
request asks for it (`outputs[i].parameters.binary_data`, or `parameters.binary_data_output` for every output).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError

from detector.api import check_images

from .errors import ApiError
from .inputs import load_json

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data"]
# The outputs every infer response can carry, with their datatype and numpy dtype (little-endian, as the binary
# extension lays them out).
OUTPUTS: dict[str, tuple[str, str]] = {
    "probabilities": ("FP32", "<f4"),
    "class_index": ("INT64", "<i8"),
    "attack_score": ("FP32", "<f4"),
    "is_adversarial": ("BOOL", "|b1"),
}


class OipTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = Field(None, description="row-major values; absent when the tensor travels as binary")
    parameters: dict[str, Any] | None = Field(None, description="`binary_data_size`: bytes after the JSON header")


class OipRequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(None, description="`binary_data`: true for raw bytes")


class OipRequest(BaseModel):
    """Open Inference Protocol v2 request: one FP32 input of shape [N, 3, H, W], values in [0, 1]."""

    id: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="`binary_data_output`: every output as raw bytes")
    inputs: list[OipTensor] = Field(min_length=1)
    outputs: list[OipRequestedOutput] | None = None


class OipResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[OipTensor]


@dataclass(frozen=True)
class InferRequest:
    images: torch.Tensor  # (N, 3, H, W) float32 in [0, 1]
    id: str
    outputs: list[tuple[str, bool]]  # (output name, as binary) in the order the response lists them


def bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tail) of a request body; without the header, the whole body is JSON."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise bad(
            f"expected Inference-Header-Content-Length to be a byte count of at most the body's {len(body)} bytes, "
            f"found {header_length[:40]!r}"
        )
    n = int(header_length)
    return body[:n], body[n:]


def _flag(params: dict[str, Any] | None, key: str) -> bool:
    value = (params or {}).get(key, False)
    if not isinstance(value, bool):
        raise bad(f"expected parameters.{key} to be true or false, found {value!r}")
    return value


def parse_infer(
    body: bytes, header_length: str | None, max_images: int, image_shape: tuple[int, int, int]
) -> InferRequest:
    """An OIP request body -> images and the outputs asked for. Every malformed request, a byte count that
    disagrees with shape x datatype or the body included, is a 400 that names what was expected."""
    head, tail = split_body(body, header_length)
    try:
        req = OipRequest.model_validate(load_json(head))
    except ApiError as e:
        raise bad(e.message) from None
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise bad(f"expected an OIP v2 request with inputs[0].shape/datatype/data: {where}") from None
    if len(req.inputs) != 1:
        raise bad(f"expected one input tensor, found {len(req.inputs)}")
    inp = req.inputs[0]
    expected = list(image_shape)
    if (
        inp.datatype != "FP32"
        or len(inp.shape) != 4
        or inp.shape[1:] != expected
        or not 1 <= inp.shape[0] <= max_images
    ):
        dims = ", ".join(map(str, expected))
        raise bad(
            f"expected FP32 input of shape [N, {dims}] with 1 <= N <= {max_images}, found {inp.datatype} {inp.shape}"
        )
    count = int(np.prod(inp.shape))
    size = (inp.parameters or {}).get("binary_data_size")
    if size is not None:
        if inp.data is not None:
            raise bad("expected either data or parameters.binary_data_size on the input, found both")
        if not isinstance(size, int) or isinstance(size, bool) or size != 4 * count or size != len(tail):
            raise bad(
                f"expected binary_data_size = {4 * count} bytes (shape {inp.shape} of FP32) and as many bytes after "
                f"the JSON header, found binary_data_size {size!r} and {len(tail)} bytes"
            )
        arr = np.frombuffer(tail, dtype="<f4")
    else:
        if tail:
            raise bad(f"found {len(tail)} bytes after the JSON header but no input with parameters.binary_data_size")
        if inp.data is None:
            raise bad("expected the input's data, or parameters.binary_data_size with the bytes after the header")
        try:
            arr = np.asarray(inp.data, dtype=np.float32)
            if arr.dtype == object or arr.size != count:
                raise ValueError(f"expected {count} numbers, found {arr.size}")
        except (TypeError, ValueError, OverflowError) as e:
            raise bad(f"data does not hold {inp.shape} numbers: {e}") from None
    x = torch.from_numpy(arr.astype(np.float32).reshape(inp.shape).copy())
    try:
        check_images(
            x, image_shape[1]
        )  # here, not in the batch: one bad request must not fail the others batched with it
    except ValueError as e:
        raise bad(str(e)) from None
    return InferRequest(x, req.id or "", requested_outputs(req))


def requested_outputs(req: OipRequest) -> list[tuple[str, bool]]:
    everything_binary = _flag(req.parameters, "binary_data_output")
    if not req.outputs:
        return [(name, everything_binary) for name in OUTPUTS]
    unknown = [o.name for o in req.outputs if o.name not in OUTPUTS]
    if unknown:
        raise bad(f"expected outputs among {list(OUTPUTS)}, found {unknown}")
    return [(o.name, everything_binary or _flag(o.parameters, "binary_data")) for o in req.outputs]


def encode_outputs(values: dict[str, np.ndarray], wanted: list[tuple[str, bool]]) -> tuple[list[dict], bytes]:
    """The response's output tensors (JSON objects) and the binary tail that follows the JSON header."""
    tensors, tail = [], []
    for name, binary in wanted:
        datatype, dtype = OUTPUTS[name]
        arr = np.ascontiguousarray(values[name], dtype=dtype)
        t: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = arr.tobytes()
            t["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            t["data"] = arr.reshape(-1).tolist()
        tensors.append(t)
    return tensors, b"".join(tail)
