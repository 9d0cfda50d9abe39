"""GET /healthz (alive), /readyz (bundle loaded), /metrics (Prometheus), /v1/model (what is served)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..batcher import MicroBatcher
from ..deps import State, get_state, ready_batcher
from ..errors import responses
from .predict import model_ref

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="alive (answers while the bundle loads)")
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/readyz", summary="200 once bundle and profiles are loaded, else 503 with the reason", responses=responses(503)
)
async def readyz(batcher: MicroBatcher = Depends(ready_batcher)) -> dict[str, Any]:
    return {"status": "ready", "model": model_ref(batcher.detector)}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}},
)
async def metrics(st: State = Depends(get_state)) -> Response:
    return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/model",
    summary="classes, threshold, hashes, calibration record and metrics of the served bundle",
    responses=responses(503),
)
async def model_info(batcher: MicroBatcher = Depends(ready_batcher)) -> dict[str, Any]:
    return batcher.detector.info()
