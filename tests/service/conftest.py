"""Service test helpers: a tiny synthetic bundle (no training) and a TestClient that waits for readiness."""

import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

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


def batch_count(c: TestClient) -> float:
    line = next(ln for ln in c.get("/metrics").text.splitlines() if ln.startswith("dnd_batch_size_count"))
    return float(line.split()[-1])


@pytest.fixture(scope="package")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detector_bundle(tmp_path_factory.mktemp("svc") / "tiny")


@pytest.fixture(scope="package")
def client(bundle: Path):
    c = client_for(
        Settings(
            model_dir=bundle, threads=1, max_wait_ms=5, body_limit=200_000, max_images=8, max_image_pixels=512 * 512
        )
    )
    yield c
    c.__exit__(None, None, None)
