"""The HTTP service with TestClient and a tiny synthetic bundle: every route, every bad input, batching, reload."""
import base64
import io
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from detector import load_detector
from service.app import create_app
from service.settings import Settings

from .conftest import write_detector_bundle

ROOT = Path(__file__).resolve().parents[1]


def png(w: int = 32, h: int = 32, seed: int = 0, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detector_bundle(tmp_path_factory.mktemp("svc") / "tiny")


def client_for(settings: Settings) -> TestClient:
    c = TestClient(create_app(settings), raise_server_exceptions=False)
    c.__enter__()
    for _ in range(500):  # the bundle loads in the background; wait for readiness
        if c.get("/readyz").status_code == 200 or c.app.state.dnd.load_error:
            break
        import time

        time.sleep(0.01)
    return c


@pytest.fixture(scope="module")
def client(bundle: Path):
    c = client_for(Settings(model_dir=bundle, threads=1, max_wait_ms=5, body_limit=200_000, max_images=8,
                            max_image_pixels=512 * 512))
    yield c
    c.__exit__(None, None, None)


def test_health_and_readiness(client: TestClient, bundle: Path) -> None:
    assert client.get("/healthz").json() == {"status": "alive"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["model"]["name"] == "tiny"
    bad = client_for(Settings(model_dir=bundle.parent / "missing"))
    assert bad.get("/healthz").status_code == 200
    r = bad.get("/readyz")
    assert r.status_code == 503 and "not found" in r.json()["error"]["message"]
    assert bad.post("/predict", content=png(), headers={"content-type": "image/png"}).status_code == 503
    assert bad.get("/v2/health/ready").status_code == 503
    bad.__exit__(None, None, None)


def test_predict_raw_image_matches_the_detector(client: TestClient, bundle: Path) -> None:
    r = client.post("/predict", content=png(seed=3), headers={"content-type": "image/png"})
    assert r.status_code == 200
    body = r.json()
    p = body["predictions"][0]
    assert set(p) == {"label", "class_index", "probabilities", "attack_score", "is_adversarial", "threshold", "resized_from"}
    x = torch.from_numpy(np.array(Image.open(io.BytesIO(png(seed=3))))).permute(2, 0, 1)[None].float() / 255
    ref = load_detector(bundle).predict(x)
    assert p["class_index"] == int(ref.labels[0]) and p["label"] == load_detector(bundle).classes[p["class_index"]]
    assert abs(p["attack_score"] - float(ref.scores[0])) < 1e-4 and p["is_adversarial"] == bool(ref.is_adversarial[0])
    assert abs(sum(p["probabilities"].values()) - 1) < 1e-4 and p["resized_from"] is None
    assert body["model"]["weights_sha256"] == load_detector(bundle).weights_sha256


def test_multipart_json_batch_and_resize(client: TestClient) -> None:
    r = client.post("/predict", files={"file": ("a.jpg", png(64, 48, fmt="JPEG"), "image/jpeg")})
    assert r.status_code == 200 and r.json()["predictions"][0]["resized_from"] == [64, 48]
    imgs = [base64.b64encode(png(seed=i)).decode() for i in range(3)]
    r = client.post("/predict", json={"images": imgs})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


def test_explain_classify_detect(client: TestClient) -> None:
    h = {"content-type": "image/png"}
    p = client.post("/predict?explain=true", content=png(), headers=h).json()["predictions"][0]
    assert len(p["active_filters"]) == 18 and len(p["per_layer_divergence"]["hamming"]) == 18
    assert all(isinstance(i, int) for layer in p["active_filters"] for i in layer)
    c = client.post("/classify", content=png(), headers=h).json()["predictions"][0]
    assert set(c) == {"label", "class_index", "probabilities", "resized_from"}
    d = client.post("/detect", content=png(), headers=h).json()["predictions"][0]
    assert set(d) == {"attack_score", "is_adversarial", "threshold", "per_layer_divergence", "resized_from"}
    assert d["attack_score"] == p["attack_score"]


def _truncated() -> bytes:
    return png(seed=1)[:60]


def _solid(w: int, h: int) -> bytes:  # a w x h grey PNG: w * h pixels from a few kB
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("content, ctype, status, code", [
    (b"hello", "text/plain", 415, "unsupported_media_type"),
    (b"this is not an image at all", "image/png", 415, "not_an_image"),
    (_truncated(), "image/png", 400, "corrupt_image"),
    (b"", "image/png", 400, "empty_body"),
    (b"\0" * 300_000, "image/png", 413, "body_too_large"),
    (_solid(6000, 6000), "image/png", 413, "image_too_large"),  # decompression bomb
    (_solid(600, 600), "image/png", 413, "image_too_large"),    # over DND_MAX_IMAGE_PIXELS
    (b"{not json", "application/json", 422, "invalid_json"),
    (json.dumps({"images": ["@@@not base64@@@"]}).encode(), "application/json", 400, "invalid_base64"),
    (json.dumps({"images": []}).encode(), "application/json", 422, "invalid_json"),
    (json.dumps({"images": ["aGk="] * 9}).encode(), "application/json", 413, "too_many_images"),
])
def test_bad_input_is_a_clear_4xx(client: TestClient, content: bytes, ctype: str, status: int, code: str) -> None:
    r = client.post("/predict", content=content, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == code and err["message"]


def test_multipart_without_file_field(client: TestClient) -> None:
    r = client.post("/predict", files={"image": ("a.png", png(), "image/png")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "missing_file"
    r = client.post("/predict", files={"file": ("a.txt", b"hello", "text/plain")})
    assert r.status_code == 415


def test_metrics_and_model_info(client: TestClient) -> None:
    client.post("/predict", content=png(), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'dnd_requests_total{route="/predict",status="200"}' in text
    assert "dnd_batch_size_count" in text and "dnd_images_flagged_total" in text and "dnd_request_latency_seconds_bucket" in text
    info = client.get("/v1/model").json()
    assert len(info["classes"]) == 10 and info["threshold"] == 0.0 and len(info["weights_sha256"]) == 64


def test_open_inference_protocol_v2(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    req = {"id": "r1", "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": x.flatten().tolist()}]}
    r = client.post("/v2/models/tiny/infer", json=req)
    assert r.status_code == 200
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["probabilities"]["shape"] == [3, 10] and len(outs["probabilities"]["data"]) == 30
    assert outs["class_index"]["shape"] == [3] and r.json()["id"] == "r1"
    assert client.get("/v2/models/other").status_code == 404
    bad = client.post("/v2/models/tiny/infer", json={"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0] * 192}]})
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    out_of_range = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.5] * 3071 + [255.0]}]}
    bad = client.post("/v2/models/tiny/infer", json=out_of_range)
    assert bad.status_code == 400 and "found range [0.5, 255]" in bad.json()["error"]


def test_batched_equals_one_by_one(client: TestClient) -> None:
    imgs = [png(seed=i) for i in range(6)]
    batch = client.post("/predict", json={"images": [base64.b64encode(b).decode() for b in imgs]}).json()["predictions"]
    single = [client.post("/predict", content=b, headers={"content-type": "image/png"}).json()["predictions"][0] for b in imgs]
    for a, b in zip(batch, single):
        assert a["class_index"] == b["class_index"] and abs(a["attack_score"] - b["attack_score"]) < 1e-4


def test_200_concurrent_requests_are_micro_batched_and_correct(bundle: Path) -> None:
    c = client_for(Settings(model_dir=bundle, threads=1, max_wait_ms=50, max_batch=32))
    imgs = [png(seed=i % 20) for i in range(200)]
    expected = {i: c.post("/predict", content=imgs[i], headers={"content-type": "image/png"}).json()["predictions"][0]["class_index"]
                for i in range(20)}
    batches_before = _batch_count(c)
    with ThreadPoolExecutor(64) as pool:
        rs = list(pool.map(lambda b: c.post("/predict", content=b, headers={"content-type": "image/png"}), imgs))
    assert all(r.status_code == 200 for r in rs)
    assert all(r.json()["predictions"][0]["class_index"] == expected[i % 20] for i, r in enumerate(rs))
    assert _batch_count(c) - batches_before < 200  # some requests shared a forward pass
    c.__exit__(None, None, None)


def test_threads_follow_batch_size(bundle: Path) -> None:
    """Small batches run on one torch thread, large ones on `threads` (set in the inference thread itself)."""
    import asyncio

    from service.batcher import MicroBatcher

    det = load_detector(bundle)
    seen: list[tuple[int, int]] = []
    predict = det.predict
    det.predict = lambda x: (seen.append((len(x), torch.get_num_threads())), predict(x))[1]  # type: ignore[method-assign]

    async def run() -> None:
        b = MicroBatcher(det, max_batch=64, max_wait_s=0.0, threads_for=lambda n: 2 if n >= 4 else 1)
        b.start()
        await b.submit(torch.rand(1, 3, 32, 32))
        await b.submit(torch.rand(8, 3, 32, 32))
        await b.submit(torch.rand(2, 3, 32, 32))
        await b.stop()

    before = torch.get_num_threads()
    asyncio.run(run())
    assert seen == [(1, 1), (8, 2), (2, 1)]
    assert torch.get_num_threads() == before  # the caller's own setting is untouched


def _batch_count(c: TestClient) -> float:
    line = next(l for l in c.get("/metrics").text.splitlines() if l.startswith("dnd_batch_size_count"))
    return float(line.split()[-1])


def test_reload_needs_key_and_drops_nothing_under_load(bundle: Path, tmp_path: Path) -> None:
    live = tmp_path / "live"
    shutil.copytree(bundle, live)
    off = client_for(Settings(model_dir=live))
    assert off.post("/admin/reload").status_code == 404  # no key configured: route disabled
    off.__exit__(None, None, None)
    c = client_for(Settings(model_dir=live, api_key="s3cret", threads=1, max_wait_ms=2))
    assert c.post("/admin/reload").status_code == 401
    assert c.post("/admin/reload", headers={"x-api-key": "wrong"}).status_code == 401
    old = c.get("/v1/model").json()["weights_sha256"]
    write_detector_bundle(live, seed=1)  # new weights + profiles, as after retraining and `dnd profiles`

    def call(i: int):
        if i == 50:
            return c.post("/admin/reload", headers={"x-api-key": "s3cret"})
        return c.post("/predict", content=png(seed=i), headers={"content-type": "image/png"})

    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(call, range(120)))
    assert [r.status_code for r in rs] == [200] * 120
    assert rs[50].json()["previous"]["weights_sha256"] == old
    assert c.get("/v1/model").json()["weights_sha256"] != old
    c.__exit__(None, None, None)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DND_MAX_BATCH", "7")
    monkeypatch.setenv("DND_API_KEY", "k")
    monkeypatch.setenv("DND_BODY_LIMIT", "123")
    s = Settings()
    assert s.max_batch == 7 and s.api_key == "k" and s.body_limit == 123


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_compose_file_is_valid() -> None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker client without the compose plugin")
    r = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("env, field", [({"DND_DEVICE": "foo"}, "device"), ({"DND_THRESHOLD": "nan"}, "threshold"),
                                        ({"DND_MAX_BATCH": "0"}, "max_batch")])
def test_bad_settings_are_refused_at_start_up(env: dict[str, str], field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as e:
        Settings()
    assert e.value.errors()[0]["loc"] == (field,)
