"""GET /: the web page (static HTML, CSS and a little JS, no build step, no external request), and its files under
/static. It calls the public API only: /v1/model, /v1/samples, /predict?explain=true and /explain.

/v1/samples lists the served bundle's own sample images (detector/samples.py: made by `dnd samples` on its weights,
from its data), so the page never offers images of another dataset or attacks made on another network."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse

from detector.samples import SAMPLES, read_samples

from ..batcher import MicroBatcher
from ..deps import ready_batcher
from ..errors import ApiError, responses

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(tags=["page"])


@router.get("/", summary="the web page", response_class=FileResponse, include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@lru_cache(maxsize=8)  # per bundle and weights: a reload to other weights reads its own
def _samples(bundle: Path, weights_sha256: str) -> tuple[dict[str, Any], ...]:
    return tuple(read_samples(bundle, weights_sha256))


@router.get(
    "/v1/samples",
    summary="the served bundle's sample images: clean test images and attacked ones made on its weights",
    responses=responses(503),
)
async def samples(batcher: MicroBatcher = Depends(ready_batcher)) -> dict[str, list[dict[str, Any]]]:
    det = batcher.detector
    items = _samples(det.bundle, det.weights_sha256)
    return {"samples": [{**s, "url": f"/v1/samples/{s['file']}"} for s in items]}


@router.get(
    "/v1/samples/{name}",
    summary="one sample image (PNG)",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}}, **responses(404, 503)},
)
async def sample(name: str, batcher: MicroBatcher = Depends(ready_batcher)) -> FileResponse:
    det = batcher.detector
    if name not in {s["file"] for s in _samples(det.bundle, det.weights_sha256)}:
        raise ApiError(404, "unknown_sample", f"no sample {name!r} in the served bundle (GET /v1/samples lists them)")
    return FileResponse(det.bundle / SAMPLES / name, media_type="image/png")
