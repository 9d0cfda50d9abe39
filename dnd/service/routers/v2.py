"""KServe Open Inference Protocol v2 over HTTP/REST: server and model metadata, health, infer on FP32 [N, 3, S, S]
tensors in [0, 1] (S: the network's input size, in the model metadata), with JSON or binary tensor data
(dnd/service/oip.py) both ways. A model's only version is its weights' hash, also served under /versions/{version}.
Errors answer as the protocol says: {"error": "message"}."""

from __future__ import annotations

import asyncio
import json
from importlib import metadata as package_metadata
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..batcher import MicroBatcher
from ..deps import State, get_state, ready_batcher
from ..errors import ApiError, responses
from ..inputs import read_body
from ..oip import EXTENSIONS, HEADER_LENGTH, OipRequest, OipResponse, encode_outputs, parse_infer

router = APIRouter(prefix="/v2", tags=["v2"])
OIP_BODY = {
    "requestBody": {
        "required": True,
        "description": (
            "JSON, or with an Inference-Header-Content-Length header, a JSON header of that many bytes followed by the "
            "input's raw little-endian FP32 bytes (binary tensor data extension; `parameters.binary_data_size`)."
        ),
        "content": {
            "application/json": {"schema": OipRequest.model_json_schema(ref_template="#/components/schemas/{model}")}
        },
    }
}


INFER_ROUTE: dict[str, Any] = {
    "response_model": OipResponse,
    "openapi_extra": OIP_BODY,
    "responses": responses(400, 404, 408, 413, 500, 503, oip=True),
}


def server_version() -> str:
    try:
        return package_metadata.version("dnd-detector")
    except package_metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "dnd-detector", "version": server_version(), "extensions": EXTENSIONS}


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


def served_version(version: str, b: MicroBatcher = Depends(served)) -> MicroBatcher:
    """The model's only version is the start of its weights' hash (what metadata lists)."""
    if version != b.detector.weights_sha256[:12]:
        raise ApiError(
            404, "unknown_version", f"unknown version {version!r}; served: {b.detector.weights_sha256[:12]!r}"
        )
    return b


@router.get("/models/{name}", responses=responses(404, 503, oip=True))
async def metadata(name: str, b: MicroBatcher = Depends(served)) -> dict[str, Any]:
    return {
        "name": name,
        "versions": [b.detector.weights_sha256[:12]],
        "platform": "pytorch_torchscript",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *b.detector.image_shape]}],
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


@router.get("/models/{name}/versions/{version}", responses=responses(404, 503, oip=True))
async def version_metadata(name: str, b: MicroBatcher = Depends(served_version)) -> dict[str, Any]:
    return await metadata(name, b)


@router.get("/models/{name}/versions/{version}/ready", responses=responses(404, 503, oip=True))
async def version_ready(name: str, b: MicroBatcher = Depends(served_version)) -> dict[str, Any]:
    return await model_ready(name, b)


@router.post(
    "/models/{name}/infer",
    **INFER_ROUTE,
)
async def infer(
    request: Request, name: str, st: State = Depends(get_state), b: MicroBatcher = Depends(served)
) -> Response:
    body = await read_body(request, st.settings.body_limit, st.settings.body_timeout_s)
    loop = asyncio.get_running_loop()
    req = await loop.run_in_executor(
        st.decode_pool,
        parse_infer,
        body,
        request.headers.get(HEADER_LENGTH),
        st.settings.max_images,
        b.detector.image_shape,
    )
    pred, det = await b.submit(req.images)
    st.metrics.images.inc(len(req.images))
    st.metrics.flagged.inc(int(pred.is_adversarial.sum()))
    values = {
        "probabilities": pred.probs.numpy(),
        "class_index": pred.labels.numpy(),
        "attack_score": pred.scores.numpy(),
        "is_adversarial": pred.is_adversarial.numpy(),
    }
    outputs, tail = encode_outputs(values, req.outputs)
    head = {"model_name": name, "model_version": det.weights_sha256[:12], "id": req.id, "outputs": outputs}
    if not tail:
        return JSONResponse(head)
    header = json.dumps(head, separators=(",", ":")).encode()
    return Response(
        header + tail,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


@router.post(
    "/models/{name}/versions/{version}/infer",
    **INFER_ROUTE,
)
async def version_infer(
    request: Request, name: str, st: State = Depends(get_state), b: MicroBatcher = Depends(served_version)
) -> Response:
    return await infer(request, name, st, b)
