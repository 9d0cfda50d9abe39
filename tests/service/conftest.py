"""Service test helpers: a tiny synthetic bundle (no training), a TestClient that waits for readiness, and a real
uvicorn server on a free loopback port."""

import http.client
import io
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from dnd.service.app import create_app
from dnd.service.server import GuardedHttpTools
from dnd.service.settings import Settings

from ..conftest import write_detector_bundle


def png(w: int = 32, h: int = 32, seed: int = 0, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt)
    return buf.getvalue()


def client_for(settings: Settings) -> TestClient:
    c = TestClient(create_app(settings), raise_server_exceptions=False)
    c.__enter__()
    for _ in range(500):  # the bundle loads in the background; wait for readiness
        if c.get("/readyz").status_code == 200 or c.app.state.dnd.load_error:
            break
        time.sleep(0.01)
    return c


@contextmanager
def serving(settings: Settings, hook: Callable[[FastAPI], None] | None = None) -> Iterator[int]:
    """Serve create_app(settings) on a free loopback port until the block ends; yields the port once ready."""
    app = create_app(settings)
    GuardedHttpTools.head_timeout = settings.header_timeout_s
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, http=GuardedHttpTools, log_level="warning", timeout_keep_alive=5)
    )
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    for _ in range(500):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/readyz")
        if c.getresponse().status == 200:
            break
        time.sleep(0.02)
    if hook:
        hook(app)
    try:
        yield port
    finally:
        server.should_exit = True
        t.join(10)


def batch_count(c: TestClient) -> float:
    line = next(ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("dnd_batch_size_count"))
    return float(line.split()[-1])


@pytest.fixture(scope="package")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic bundle, with two clean and two "attacked" sample images for the page (random pixels: what
    is tested is how the service serves a bundle's samples; `dnd samples` itself is tested in test_samples.py)."""
    import torch

    from detector.samples import write_samples

    out = write_detector_bundle(tmp_path_factory.mktemp("svc") / "tiny")
    g = torch.Generator().manual_seed(0)
    img = [torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g) for _ in range(4)]
    write_samples(out, [(img[0], "c0"), (img[1], "c1")], [(img[2], "c2", "c3"), (img[3], "c4", "c5")])
    return out


@pytest.fixture(scope="package")
def client(bundle: Path):
    c = client_for(
        Settings(
            model_dir=bundle, threads=1, max_wait_ms=5, body_limit=200_000, max_images=8, max_image_pixels=512 * 512
        )
    )
    yield c
    c.__exit__(None, None, None)
