"""KServe Open Inference Protocol v2: health, model metadata, infer on FP32 [N, 3, 32, 32] tensors in [0, 1].
Errors answer as the protocol says: {"error": "message"}."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from detector.api import check_images

from ..batcher import MicroBatcher
from ..deps import State, get_state, ready_batcher
from ..errors import ApiError, responses
from ..inputs import load_json, read_body
from ..schemas import OipRequest, OipResponse

router = APIRouter(prefix="/v2", tags=["v2"])
OIP_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": OipRequest.model_json_schema(ref_template="#/components/schemas/{model}")}
        },
    }
}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "model not loaded yet"}})
async def ready(st: State = Depends(get_state)) -> JSONResponse:
    ok = st.batcher is not None
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


def served(name: str, batcher: MicroBatcher = Depends(ready_batcher)) -> MicroBatcher:
    if name != batcher.detector.name:
        raise ApiError(404, "unknown_model", f"unknown model {name!r}; this server serves {batcher.detector.name!r}")
    return batcher


@router.get("/models/{name}", responses=responses(404, 503, oip=True))
async def metadata(name: str, b: MicroBatcher = Depends(served)) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [b.detector.weights_sha256[:12]],
        "platform": "pytorch_torchscript",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(b.detector.classes)]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "attack_score", "datatype": "FP32", "shape": [-1]},
            {"name": "is_adversarial", "datatype": "BOOL", "shape": [-1]},
        ],
    }


@router.get("/models/{name}/ready", responses=responses(404, 503, oip=True))
async def model_ready(name: str, b: MicroBatcher = Depends(served)) -> dict[str, Any]:
    return {"name": name, "ready": True}


def parse_infer(body: bytes, max_images: int) -> tuple[torch.Tensor, str]:
    """(images (N, 3, 32, 32), request id) from an OIP request body; every malformed request is a 400 that names
    what was expected. Runs in a decode thread."""
    try:
        req = OipRequest.model_validate(load_json(body))
    except ApiError as e:
        raise ApiError(400, "invalid_request", e.message) from None
    except ValidationError as e:
        where = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise ApiError(
            400, "invalid_request", f"expected an OIP v2 request with inputs[0].shape/datatype/data: {where}"
        ) from None
    inp = req.inputs[0]
    if (
        inp.datatype != "FP32"
        or len(inp.shape) != 4
        or inp.shape[1:] != [3, 32, 32]
        or not 1 <= inp.shape[0] <= max_images
    ):
        raise ApiError(
            400,
            "invalid_request",
            f"expected FP32 input of shape [N, 3, 32, 32] with 1 <= N <= {max_images}, "
            f"found {inp.datatype} {inp.shape}",
        )
    try:
        arr = np.asarray(inp.data, dtype=np.float32)
        if arr.dtype == object or arr.size != int(np.prod(inp.shape)):
            raise ValueError(f"expected {int(np.prod(inp.shape))} numbers, found {arr.size}")
        x = torch.from_numpy(arr.reshape(inp.shape).copy())
    except (TypeError, ValueError, OverflowError) as e:
        raise ApiError(400, "invalid_request", f"data does not hold {inp.shape} numbers: {e}") from None
    try:
        check_images(x)  # here, not in the batch: one bad request must not fail the others batched with it
    except ValueError as e:
        raise ApiError(400, "invalid_request", str(e)) from None
    return x, req.id or ""


@router.post(
    "/models/{name}/infer",
    response_model=OipResponse,
    openapi_extra=OIP_BODY,
    responses=responses(400, 404, 408, 413, 500, 503, oip=True),
)
async def infer(
    request: Request, name: str, st: State = Depends(get_state), b: MicroBatcher = Depends(served)
) -> JSONResponse:
    body = await read_body(request, st.settings.body_limit, st.settings.body_timeout_s)
    loop = asyncio.get_running_loop()
    x, rid = await loop.run_in_executor(st.decode_pool, parse_infer, body, st.settings.max_images)
    pred, det = await b.submit(x)
    st.metrics.images.inc(len(x))
    st.metrics.flagged.inc(int(pred.is_adversarial.sum()))
    n = len(x)
    return JSONResponse(
        {
            "model_name": name,
            "model_version": det.weights_sha256[:12],
            "id": rid,
            "outputs": [
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [n, len(det.classes)],
                    "data": pred.probs.flatten().tolist(),
                },
                {"name": "class_index", "datatype": "INT64", "shape": [n], "data": pred.labels.tolist()},
                {"name": "attack_score", "datatype": "FP32", "shape": [n], "data": pred.scores.tolist()},
                {"name": "is_adversarial", "datatype": "BOOL", "shape": [n], "data": pred.is_adversarial.tolist()},
            ],
        }
    )
