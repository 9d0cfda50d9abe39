"""The Open Inference Protocol v2 routes."""

import pytest
import torch
from fastapi.testclient import TestClient


def test_open_inference_protocol_v2(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    meta = client.get("/v2/models/tiny").json()
    assert meta["inputs"][0]["shape"] == [-1, 3, 32, 32]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    req = {
        "id": "r1",
        "inputs": [{"name": "input", "shape": [3, 3, 32, 32], "datatype": "FP32", "data": x.flatten().tolist()}],
    }
    r = client.post("/v2/models/tiny/infer", json=req)
    assert r.status_code == 200
    outs = {o["name"]: o for o in r.json()["outputs"]}
    assert outs["probabilities"]["shape"] == [3, 10] and len(outs["probabilities"]["data"]) == 30
    assert outs["class_index"]["shape"] == [3] and r.json()["id"] == "r1"
    assert client.get("/v2/models/other").status_code == 404
    bad = client.post(
        "/v2/models/tiny/infer",
        json={"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0] * 192}]},
    )
    assert bad.status_code == 400 and isinstance(bad.json()["error"], str)
    out_of_range = {
        "inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.5] * 3071 + [255.0]}]
    }
    bad = client.post("/v2/models/tiny/infer", json=out_of_range)
    assert bad.status_code == 400 and "found range [0.5, 255]" in bad.json()["error"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [{"name": "input", "shape": [1e400, 3, 32, 32], "datatype": "FP32", "data": [0]}]}',
        b'{"inputs": [{"name": "input", "shape": [Infinity, 3, 32, 32], "datatype": "FP32", "data": [0]}]}',
        b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [' + b"1" * 401 + b"]}]}",
        b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [' + b"9" * 5000 + b"]}]}",
        b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [[1, 2], [3]]}]}',
        b'{"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": ["a"]}]}',
        b'{"inputs": []}',
        b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b"[" * 10_000 + b"]" * 10_000,
        b"not json",
    ],
)
def test_malformed_oip_requests_are_400_in_the_protocols_shape(client: TestClient, body: bytes) -> None:
    r = client.post("/v2/models/tiny/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]
