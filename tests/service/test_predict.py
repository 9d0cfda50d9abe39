"""POST /predict, /classify, /detect: answers, input kinds, explain, batching."""

import base64
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from detector import load_detector
from dnd.service.settings import Settings

from ..conftest import REAL_DATA, TINY_LAYERS
from .conftest import batch_count, client_for, png


def test_predict_raw_image_matches_the_detector(client: TestClient, bundle: Path) -> None:
    r = client.post("/predict", content=png(seed=3), headers={"content-type": "image/png"})
    assert r.status_code == 200
    body = r.json()
    p = body["predictions"][0]
    assert set(p) == {
        "label",
        "class_index",
        "probabilities",
        "attack_score",
        "is_adversarial",
        "threshold",
        "resized_from",
    }
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
    assert len(p["active_filters"]) == len(p["per_layer_divergence"]["hamming"]) == TINY_LAYERS
    assert all(isinstance(i, int) for layer in p["active_filters"] for i in layer)
    c = client.post("/classify", content=png(), headers=h).json()["predictions"][0]
    assert set(c) == {"label", "class_index", "probabilities", "resized_from"}
    d = client.post("/detect", content=png(), headers=h).json()["predictions"][0]
    assert set(d) == {"attack_score", "is_adversarial", "threshold", "per_layer_divergence", "resized_from"}
    assert d["attack_score"] == p["attack_score"]


def test_batched_equals_one_by_one(client: TestClient) -> None:
    imgs = [png(seed=i) for i in range(6)]
    batch = client.post("/predict", json={"images": [base64.b64encode(b).decode() for b in imgs]}).json()["predictions"]
    single = [
        client.post("/predict", content=b, headers={"content-type": "image/png"}).json()["predictions"][0] for b in imgs
    ]
    for a, b in zip(batch, single):
        assert a["class_index"] == b["class_index"] and abs(a["attack_score"] - b["attack_score"]) < 1e-4


def test_200_concurrent_requests_are_micro_batched_and_correct(bundle: Path) -> None:
    c = client_for(Settings(model_dir=bundle, threads=1, max_wait_ms=50, max_batch=32))
    imgs = [png(seed=i % 20) for i in range(200)]
    expected = {
        i: c.post("/predict", content=imgs[i], headers={"content-type": "image/png"}).json()["predictions"][0][
            "class_index"
        ]
        for i in range(20)
    }
    batches_before = batch_count(c)
    with ThreadPoolExecutor(64) as pool:
        rs = list(pool.map(lambda b: c.post("/predict", content=b, headers={"content-type": "image/png"}), imgs))
    assert all(r.status_code == 200 for r in rs)
    assert all(r.json()["predictions"][0]["class_index"] == expected[i % 20] for i, r in enumerate(rs))
    assert batch_count(c) - batches_before < 200  # some requests shared a forward pass
    c.__exit__(None, None, None)


def test_the_readme_example_is_what_the_service_answers() -> None:
    """README's `curl POST /predict` example is the shipped bundle's answer for that test image, to the digits shown
    (it goes stale when the bundle or its profiles change)."""
    repo = Path(__file__).resolve().parents[2]
    image = REAL_DATA / "test" / "cat" / "0000.jpg"
    if not image.is_file():
        pytest.skip(f"{image} not unpacked (run `make data` or set DND_TEST_DATA)")
    shown = re.search(
        r'"label":"(\w+)","class_index":(\d+),.*?"attack_score":(-?[\d.]+),"is_adversarial":(\w+),"threshold":([\d.]+)',
        (repo / "README.md").read_text(),
        re.S,
    )
    assert shown, "README has no POST /predict example"
    c = client_for(Settings(model_dir=repo / "models" / "resnet20-decoupled", engine="masked"))
    r = c.post("/predict", content=image.read_bytes(), headers={"content-type": "image/jpeg"})
    c.__exit__(None, None, None)
    p = r.json()["predictions"][0]
    assert (p["label"], p["class_index"], json.dumps(p["is_adversarial"])) == (shown[1], int(shown[2]), shown[4])
    assert (f"{p['attack_score']:.3f}", f"{p['threshold']:.3f}") == (shown[3], shown[5])
