"""GET /healthz, /readyz, /metrics, /v1/model."""

from pathlib import Path

from fastapi.testclient import TestClient

from dnd.service.settings import Settings

from .conftest import client_for, png


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


def test_metrics_and_model_info(client: TestClient) -> None:
    client.post("/predict", content=png(), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert 'dnd_requests_total{route="/predict",status="200"}' in text
    assert (
        "dnd_batch_size_count" in text
        and "dnd_images_flagged_total" in text
        and "dnd_request_latency_seconds_bucket" in text
    )
    info = client.get("/v1/model").json()
    assert len(info["classes"]) == 10 and info["threshold"] == 0.0 and len(info["weights_sha256"]) == 64
    # which trade-off the served network makes: the test bundle is not adversarially trained
    assert info["training"]["adversarial"] is None and "standard training" in info["training"]["trade_off"]
    # what the served score reads: the test bundle's profiles name no consistency or confidence family
    assert info["score_reads"]["families"] == ["path"] and info["score_reads"]["transforms"] == {}
    # which forward serves: by default the faster of the two engines, timed on this bundle at start
    engine = info["engine"]
    assert engine["traced"] and engine["name"] == engine["timing"]["engine"]
    assert set(engine["timing"]["median_ms"]) == {"masked", "sparse"}


def test_the_engine_can_be_fixed(bundle: Path) -> None:
    c = client_for(Settings(model_dir=bundle, engine="sparse", threads=1))
    assert c.get("/v1/model").json()["engine"] == {"name": "sparse", "traced": True, "timing": None}
    r = c.post("/predict", content=png(), headers={"content-type": "image/png"})
    assert r.status_code == 200
    c.__exit__(None, None, None)
