"""POST /explain: one image's calculation path against its predicted class's signature, as an SVG picture, with
the layers where it departs from the class marked (detector/interpretation/explain.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from detector.interpretation import path_svg

from ..batcher import MicroBatcher
from ..deps import State, get_state, ready_batcher
from ..errors import responses
from ..inputs import parse_images
from ..schemas import IMAGE_BODY

router = APIRouter(tags=["explain"])


@router.post(
    "/explain",
    summary="the first image's calculation path against its class signature (SVG)",
    response_class=Response,
    openapi_extra=IMAGE_BODY,
    responses={
        200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}},
        **responses(400, 408, 413, 415, 422, 500, 503),
    },
)
async def explain(
    request: Request, st: State = Depends(get_state), batcher: MicroBatcher = Depends(ready_batcher)
) -> Response:
    x, _ = await parse_images(request, st.settings, st.decode_pool, batcher.detector.image_shape[1])
    pred, det = await batcher.submit(x[:1])
    c = int(pred.labels[0])
    svg = path_svg(
        [z[0] for z in pred.paths],
        [f[c] for f in det.profiles.freq],
        det.classes[c],
        float(pred.scores[0]),
        det.threshold,
    )
    return Response(svg, media_type="image/svg+xml")
