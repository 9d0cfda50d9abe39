"""FastAPI app: classify + detect over HTTP, KServe Open Inference Protocol v2, Prometheus metrics, hot reload.

Error shape (every 4xx/5xx outside /v2): {"error": {"status": 415, "code": "not_an_image", "message": "..."}}.
/v2 routes answer errors as the Open Inference Protocol says: {"error": "message"}.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from detector.api import Detector, Prediction, check_images, load_detector
from detector.images import InputError as ApiError  # the service's error type: status, code, message
from detector.images import decode_base64, decode_image
from detector.runtime import tune_malloc

from .batcher import MicroBatcher
from .settings import Settings

log = logging.getLogger("dnd.service")
IMAGE_TYPES = ("image/",)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()  # per app, so several apps (tests) never collide
        self.requests = Counter("dnd_requests_total", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("dnd_request_latency_seconds", "request latency", ["route"], registry=self.registry,
                                 buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.batch = Histogram("dnd_batch_size", "images per forward pass", registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.images = Counter("dnd_images_total", "images classified", registry=self.registry)
        self.flagged = Counter("dnd_images_flagged_total", "images flagged as adversarial", registry=self.registry)


class State:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.batcher: MicroBatcher | None = None
        self.load_error: str | None = None
        self.reload_lock = asyncio.Lock()

    @property
    def detector(self) -> Detector | None:
        return self.batcher.detector if self.batcher else None


def _load(settings: Settings) -> Detector:
    det = load_detector(settings.model_dir, settings.device, settings.threshold)
    return det.trace() if settings.trace else det


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st: State = app.state.dnd
        tune_malloc()  # fixed glibc thresholds: no page faults per batch (detector/runtime.py); `dnd serve` did it too
        torch.set_num_threads(1)  # request handling (decode, resize); inference threads are set per batch
        Image.MAX_IMAGE_PIXELS = settings.max_image_pixels  # Pillow's own bomb guard, tightened to our limit

        async def load() -> None:
            try:
                det = await asyncio.to_thread(_load, settings)
            except Exception as e:  # noqa: BLE001 - stay alive, report not-ready with the reason
                st.load_error = f"{type(e).__name__}: {e}"
                log.error("could not load %s: %s", settings.model_dir, st.load_error)
                return
            st.batcher = MicroBatcher(det, settings.max_batch, settings.max_wait_ms / 1000, st.metrics.batch.observe,
                                      threads_for=lambda n: settings.threads if n >= settings.parallel_min_batch else 1)
            st.batcher.start()
            log.info("loaded %s (threshold %.4f)", settings.model_dir, det.threshold)

        loader = asyncio.create_task(load())  # /healthz answers at once; /readyz turns 200 when this is done
        yield
        loader.cancel()
        if st.batcher:
            await st.batcher.stop()

    app = FastAPI(title="DND adversarial-example detector", version="0.1.0", lifespan=lifespan)
    app.state.dnd = State(settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.dnd.metrics)
    _install_handlers(app)
    _install_routes(app)
    return app


def _error(status: int, code: str, message: str, path: str) -> JSONResponse:
    if path.startswith("/v2/"):
        return JSONResponse({"error": message}, status_code=status)
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e.status, e.code, e.message, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", str(e.errors()[:3]), request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, "http_error", str(e.detail), request.url.path)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal_error", f"{type(e).__name__}: {e}", request.url.path)



class MetricsMiddleware:
    """Pure ASGI (BaseHTTPMiddleware costs ~1 ms a request): counts requests by route template and status, and
    observes latency."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - t0)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` (header first, then stream)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"expected a body of at most {limit} bytes, found Content-Length {declared}")
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ApiError(413, "body_too_large", f"expected a body of at most {limit} bytes; stopped reading at {n}")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_images(request: Request, st: State) -> tuple[torch.Tensor, list[list[int] | None]]:
    """Multipart (field `file`), raw image body, or JSON {"images": [base64, ...]} -> ((n, 3, 32, 32), resized)."""
    s = st.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, s.body_limit)
    if not body:
        raise ApiError(400, "empty_body", "expected an image (raw, multipart field `file`, or JSON base64 list), found an empty body")
    if ctype == "multipart/form-data":
        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
        except Exception as e:  # noqa: BLE001 - malformed multipart
            raise ApiError(400, "invalid_multipart", f"could not parse the multipart body: {e}") from None
        f = form.get("file")
        if f is None or isinstance(f, str):
            raise ApiError(422, "missing_file", f"expected a multipart file field named `file`, found fields {list(form.keys())}")
        raws = [await f.read()]
        ftype = (f.content_type or "").lower()
        if ftype and not ftype.startswith(IMAGE_TYPES) and ftype != "application/octet-stream":
            raise ApiError(415, "unsupported_media_type", f"expected an image file, found content type {ftype}")
    elif ctype.startswith(IMAGE_TYPES) or ctype == "application/octet-stream":
        raws = [body]
    elif ctype == "application/json":
        try:
            doc = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ApiError(422, "invalid_json", f"malformed JSON: {e}") from None
        imgs = doc.get("images") if isinstance(doc, dict) else None
        if not isinstance(imgs, list) or not imgs:
            raise ApiError(422, "invalid_json", 'expected {"images": [<base64 image>, ...]} with at least one image')
        if len(imgs) > s.max_images:
            raise ApiError(413, "too_many_images", f"expected at most {s.max_images} images per request, found {len(imgs)}")
        raws = [decode_base64(v, i) for i, v in enumerate(imgs)]
    else:
        raise ApiError(415, "unsupported_media_type", f"expected an image/* body, multipart/form-data or application/json, "
                       f"found {ctype or 'no content type'}")
    decoded = [decode_image(r, s.max_image_pixels) for r in raws]
    return torch.stack([x for x, _ in decoded]), [r for _, r in decoded]


def _model_ref(det: Detector) -> dict[str, str]:
    return {"name": det.name, "weights_sha256": det.weights_sha256}


def _records(p: Prediction, det: Detector, resized: list, fields: str, explain: bool) -> list[dict[str, Any]]:
    # tensors -> Python lists once per request, not one tensor access per number
    labels, probs, scores, flags = p.labels.tolist(), p.probs.tolist(), p.scores.tolist(), p.is_adversarial.tolist()
    ham, jac = p.per_layer.tolist(), p.per_layer_jaccard.tolist()
    out = []
    for i, k in enumerate(labels):
        r: dict[str, Any] = {}
        if fields in ("predict", "classify"):
            r |= {"label": det.classes[k], "class_index": k,
                  "probabilities": {c: round(v, 6) for c, v in zip(det.classes, probs[i])}}
        if fields in ("predict", "detect"):
            r |= {"attack_score": round(scores[i], 6), "is_adversarial": flags[i], "threshold": det.threshold}
        if fields == "detect" or explain:
            r["per_layer_divergence"] = {"hamming": [round(v, 4) for v in ham[i]], "jaccard": [round(v, 4) for v in jac[i]]}
        if explain:
            r["active_filters"] = [torch.nonzero(z[i]).flatten().tolist() for z in p.paths]
        r["resized_from"] = resized[i]
        out.append(r)
    return out


def _install_routes(app: FastAPI) -> None:
    def state(request: Request) -> State:
        return request.app.state.dnd

    def ready(st: State) -> MicroBatcher:
        if st.batcher is None:
            raise ApiError(503, "not_ready", f"model not loaded yet{': ' + st.load_error if st.load_error else ''}")
        return st.batcher

    async def run(request: Request, fields: str, explain: bool) -> JSONResponse:
        st = state(request)
        batcher = ready(st)
        x, resized = await parse_images(request, st)
        pred, det = await batcher.submit(x)
        st.metrics.images.inc(len(x))
        st.metrics.flagged.inc(int(pred.is_adversarial.sum()))
        return JSONResponse({"model": _model_ref(det), "predictions": _records(pred, det, resized, fields, explain)})

    @app.post("/predict", summary="label, probabilities and attack score per image")
    async def predict(request: Request, explain: bool = False) -> JSONResponse:
        return await run(request, "predict", explain)

    @app.post("/classify", summary="label and probabilities per image")
    async def classify(request: Request) -> JSONResponse:
        return await run(request, "classify", False)

    @app.post("/detect", summary="attack score, flag and per-layer divergence per image")
    async def detect(request: Request, explain: bool = False) -> JSONResponse:
        return await run(request, "detect", explain)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(request: Request) -> dict[str, Any]:
        det = ready(state(request)).detector
        return {"status": "ready", "model": _model_ref(det)}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model")
    async def model_info(request: Request) -> dict[str, Any]:
        return ready(state(request)).detector.info()

    @app.post("/admin/reload", summary="reload bundle and profiles (header X-API-Key)")
    async def reload(request: Request) -> dict[str, Any]:
        st = state(request)
        key = st.settings.api_key
        if not key:
            raise ApiError(404, "disabled", "reload is disabled: set DND_API_KEY to enable it")
        given = request.headers.get("x-api-key", "")
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise ApiError(401, "unauthorized", "expected a valid X-API-Key header")
        batcher = ready(st)
        async with st.reload_lock:
            try:
                det = await asyncio.to_thread(_load, st.settings)  # not the inference thread: serving goes on
            except Exception as e:  # noqa: BLE001 - keep serving the old model
                raise ApiError(409, "reload_failed", f"kept the current model; could not load the new one: {e}") from None
            old = batcher.detector
            batcher.swap(det)
        return {"status": "reloaded", "model": _model_ref(det), "previous": _model_ref(old)}

    # ---- KServe Open Inference Protocol v2 ----
    @app.get("/v2/health/live")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def v2_ready(request: Request) -> JSONResponse:
        ok = state(request).batcher is not None
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    def v2_model(request: Request, name: str) -> tuple[State, MicroBatcher]:
        st = state(request)
        b = ready(st)
        if name != b.detector.name:
            raise ApiError(404, "unknown_model", f"unknown model {name!r}; this server serves {b.detector.name!r}")
        return st, b

    @app.get("/v2/models/{name}")
    async def v2_metadata(request: Request, name: str) -> dict[str, Any]:
        _, b = v2_model(request, name)
        return {"name": name, "versions": [b.detector.weights_sha256[:12]], "platform": "pytorch_torchscript",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}],
                "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(b.detector.classes)]},
                            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
                            {"name": "attack_score", "datatype": "FP32", "shape": [-1]},
                            {"name": "is_adversarial", "datatype": "BOOL", "shape": [-1]}]}

    @app.get("/v2/models/{name}/ready")
    async def v2_model_ready(request: Request, name: str) -> dict[str, Any]:
        v2_model(request, name)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    async def v2_infer(request: Request, name: str) -> JSONResponse:
        st, b = v2_model(request, name)
        body = await read_body(request, st.settings.body_limit)
        try:
            doc = json.loads(body)
            inp = doc["inputs"][0]
            shape, dtype, data = [int(v) for v in inp["shape"]], inp["datatype"], inp["data"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError) as e:
            raise ApiError(400, "invalid_request", f"expected an OIP v2 request with inputs[0].shape/datatype/data: {e}") from None
        if dtype != "FP32" or len(shape) != 4 or shape[1:] != [3, 32, 32] or not 1 <= shape[0] <= st.settings.max_images:
            raise ApiError(400, "invalid_request", f"expected FP32 input of shape [N, 3, 32, 32] with 1 <= N <= "
                           f"{st.settings.max_images}, found {dtype} {shape}")
        try:
            x = torch.tensor(data, dtype=torch.float32).reshape(shape)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ApiError(400, "invalid_request", f"data does not hold {shape} numbers: {e}") from None
        try:
            check_images(x)  # here, not in the batch: one bad request must not fail the others batched with it
        except ValueError as e:
            raise ApiError(400, "invalid_request", str(e)) from None
        pred, det = await b.submit(x)
        st.metrics.images.inc(len(x))
        st.metrics.flagged.inc(int(pred.is_adversarial.sum()))
        n = len(x)
        return JSONResponse({"model_name": name, "model_version": det.weights_sha256[:12], "id": doc.get("id", ""),
                "outputs": [
                    {"name": "probabilities", "datatype": "FP32", "shape": [n, len(det.classes)],
                     "data": pred.probs.flatten().tolist()},
                    {"name": "class_index", "datatype": "INT64", "shape": [n], "data": pred.labels.tolist()},
                    {"name": "attack_score", "datatype": "FP32", "shape": [n], "data": pred.scores.tolist()},
                    {"name": "is_adversarial", "datatype": "BOOL", "shape": [n], "data": pred.is_adversarial.tolist()}]})
