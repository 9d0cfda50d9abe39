"""The FastAPI app: `create_app(settings)`. The bundle loads in the background at start (/healthz answers at once,
/readyz turns 200 when it is in); routes live in service/routers/, request handling in inputs / errors / middleware.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from PIL import Image

from detector.runtime import tune_malloc

from .batcher import MicroBatcher
from .deps import State
from .errors import install_handlers
from .loading import load
from .middleware import RequestContext
from .routers import admin, explain, health, page, predict, v2
from .settings import Settings

log = logging.getLogger("dnd.service")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    st: State = app.state.dnd
    s = st.settings
    tune_malloc()  # fixed glibc thresholds: no page faults per batch (detector/runtime.py)
    torch.set_num_threads(1)  # request handling (decode, resize); inference threads are set per batch
    Image.MAX_IMAGE_PIXELS = s.max_image_pixels  # Pillow's own bomb guard, at our limit

    async def load_in_background() -> None:
        try:
            det = await asyncio.to_thread(load, s)
        except Exception as e:
            st.load_error = f"{type(e).__name__}: {e}"
            log.error("could not load %s: %s", s.model_dir, st.load_error)
            return
        st.batcher = MicroBatcher(
            det,
            s.max_batch,
            s.max_wait_ms / 1000,
            st.metrics.batch.observe,
            threads_for=lambda n: s.threads if n >= s.parallel_min_batch else 1,
        )
        st.batcher.start()
        log.info("loaded %s (threshold %.4f)", s.model_dir, det.threshold)

    loader = asyncio.create_task(load_in_background())
    yield
    loader.cancel()
    if st.batcher:
        await st.batcher.stop()
    st.decode_pool.shutdown(wait=False, cancel_futures=True)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="DND adversarial-example detector",
        version="0.2.0",
        lifespan=lifespan,
        description="Classifies images with the loaded bundle's network and flags adversarial ones from their "
        "calculation paths (GET /v1/model: its classes and input size).",
    )
    app.state.dnd = State(settings)
    app.add_middleware(RequestContext, metrics=app.state.dnd.metrics)
    install_handlers(app)
    for r in (predict.router, explain.router, health.router, admin.router, v2.router, page.router):
        app.include_router(r)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    return app
