"""GET /v1/samples, /v1/samples/{name}: the served bundle's own sample images, nothing else from its folder."""

import shutil
from pathlib import Path

from fastapi.testclient import TestClient

from dnd.service.settings import Settings

from ..conftest import write_detector_bundle
from .conftest import client_for


def test_only_listed_samples_are_served(client: TestClient) -> None:
    listed = client.get("/v1/samples").json()["samples"]
    assert len(listed) == 4 and all(s["url"] == f"/v1/samples/{s['file']}" for s in listed)
    for name in ("nope.png", "samples.json", "..%2Fmodel.safetensors", "%2E%2E%2Fconfig.json"):
        r = client.get(f"/v1/samples/{name}")
        assert r.status_code == 404, name
        assert r.json()["error"]["code"] in ("unknown_sample", "not_found"), r.json()


def test_a_bundle_without_current_samples_lists_none(bundle: Path, tmp_path: Path) -> None:
    stale = shutil.copytree(bundle, tmp_path / "stale")
    write_detector_bundle(stale, seed=1)  # new weights; the samples folder stays
    c = client_for(Settings(model_dir=stale, threads=1))
    assert c.get("/v1/samples").json() == {"samples": []}
    name = next((stale / "samples").glob("*.png")).name
    assert c.get(f"/v1/samples/{name}").status_code == 404
    c.__exit__(None, None, None)
