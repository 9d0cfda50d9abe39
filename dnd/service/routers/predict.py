"""POST /predict, /classify, /detect: the same inputs, answered with label + score, label only, or score only."""

from __future__ import annotations

from typing import Any

import torch
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from detector.api import Detector, Prediction

from ..batcher import MicroBatcher
from ..deps import State, get_state, ready_batcher
from ..errors import responses
from ..inputs import parse_images
from ..schemas import IMAGE_BODY, Predictions

router = APIRouter(tags=["predict"])
ERRORS = responses(400, 408, 413, 415, 422, 500, 503)
EXPLAIN = Query(False, description="add the calculation path (open filters per layer) and per-layer divergences")


def model_ref(det: Detector) -> dict[str, str]:
    return {"name": det.name, "weights_sha256": det.weights_sha256}


def records(p: Prediction, det: Detector, resized: list, fields: str, explain: bool) -> list[dict[str, Any]]:
    """Per image, the fields of route `fields` (predict / classify / detect) and, with explain, the path."""
    # tensors -> Python lists once per request, not one tensor access per number
    labels, probs, scores, flags = p.labels.tolist(), p.probs.tolist(), p.scores.tolist(), p.is_adversarial.tolist()
    ham, jac = p.per_layer.tolist(), p.per_layer_jaccard.tolist()
    out = []
    for i, k in enumerate(labels):
        r: dict[str, Any] = {}
        if fields in ("predict", "classify"):
            r |= {
                "label": det.classes[k],
                "class_index": k,
                "probabilities": {c: round(v, 6) for c, v in zip(det.classes, probs[i])},
            }
        if fields in ("predict", "detect"):
            r |= {"attack_score": round(scores[i], 6), "is_adversarial": flags[i], "threshold": det.threshold}
        if fields == "detect" or explain:
            r["per_layer_divergence"] = {
                "hamming": [round(v, 4) for v in ham[i]],
                "jaccard": [round(v, 4) for v in jac[i]],
            }
        if explain:
            r["active_filters"] = [torch.nonzero(z[i]).flatten().tolist() for z in p.paths]
        r["resized_from"] = resized[i]
        out.append(r)
    return out


async def answer(request: Request, st: State, batcher: MicroBatcher, fields: str, explain: bool) -> JSONResponse:
    size = batcher.detector.image_shape[1]
    x, resized = await parse_images(request, st.settings, st.decode_pool, size)
    pred, det = await batcher.submit(x)
    st.metrics.images.inc(len(x))
    st.metrics.flagged.inc(int(pred.is_adversarial.sum()))
    return JSONResponse({"model": model_ref(det), "predictions": records(pred, det, resized, fields, explain)})


@router.post(
    "/predict",
    summary="label, probabilities and attack score per image",
    response_model=Predictions,
    openapi_extra=IMAGE_BODY,
    responses=ERRORS,
)
async def predict(
    request: Request,
    explain: bool = EXPLAIN,
    st: State = Depends(get_state),
    batcher: MicroBatcher = Depends(ready_batcher),
) -> JSONResponse:
    return await answer(request, st, batcher, "predict", explain)


@router.post(
    "/classify",
    summary="label and probabilities per image",
    response_model=Predictions,
    openapi_extra=IMAGE_BODY,
    responses=ERRORS,
)
async def classify(
    request: Request,
    explain: bool = EXPLAIN,
    st: State = Depends(get_state),
    batcher: MicroBatcher = Depends(ready_batcher),
) -> JSONResponse:
    return await answer(request, st, batcher, "classify", explain)


@router.post(
    "/detect",
    summary="attack score, flag and per-layer divergence per image",
    response_model=Predictions,
    openapi_extra=IMAGE_BODY,
    responses=ERRORS,
)
async def detect(
    request: Request,
    explain: bool = EXPLAIN,
    st: State = Depends(get_state),
    batcher: MicroBatcher = Depends(ready_batcher),
) -> JSONResponse:
    return await answer(request, st, batcher, "detect", explain)
