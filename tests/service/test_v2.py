"""The Open Inference Protocol v2 routes."""

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient


def binary_request(x: np.ndarray, header: dict | None = None, extra: bytes = b"") -> tuple[bytes, dict[str, str]]:
    """A binary-tensor-data request: JSON header, then the input's raw FP32 bytes (and `extra`)."""
    raw = x.astype("<f4").tobytes()
    head = header or {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": len(raw)}}
        ]
    }
    h = json.dumps(head).encode()
    return h + raw + extra, {"inference-header-content-length": str(len(h)), "content-type": "application/octet-stream"}


def test_server_metadata_and_v2_errors_in_the_protocols_shape(client: TestClient) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "dnd-detector" and "binary_tensor_data" in meta["extensions"] and meta["version"]
    for path in ("/v2/nope", "/v2/models/other", "/v2/models/tiny/versions/0/ready"):
        r = client.get(path)
        assert r.status_code == 404 and isinstance(r.json()["error"], str), path
    assert isinstance(client.post("/v2").json()["error"], str)  # 405 on the server route too


def test_binary_input_and_outputs_match_json(client: TestClient) -> None:
    x = np.random.default_rng(1).random((2, 3, 32, 32), dtype=np.float32)
    j = client.post(
        "/v2/models/tiny/infer",
        json={"inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "data": x.ravel().tolist()}]},
    ).json()
    body, headers = binary_request(x)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 200 and "inference-header-content-length" not in r.headers  # JSON outputs by default
    assert r.json()["outputs"] == j["outputs"]
    header = {
        "inputs": [
            {"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "is_adversarial"}],
    }
    body, headers = binary_request(x, header)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    n = int(r.headers["inference-header-content-length"])
    head = json.loads(r.content[:n])
    probs, flags = head["outputs"]
    assert probs["parameters"]["binary_data_size"] == 2 * 10 * 4 and "data" not in probs
    got = np.frombuffer(r.content[n:], "<f4").reshape(2, 10)
    np.testing.assert_array_equal(got, np.asarray(j["outputs"][0]["data"], np.float32).reshape(2, 10))
    assert flags["data"] == j["outputs"][3]["data"] and len(r.content) == n + 80
    every = {**header, "outputs": None, "parameters": {"binary_data_output": True}}
    body, headers = binary_request(x, every)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    n = int(r.headers["inference-header-content-length"])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(r.content[:n])["outputs"]]
    assert sizes == [80, 16, 8, 2]  # FP32 [2, 10], INT64 [2], FP32 [2], BOOL [2]


@pytest.mark.parametrize(
    "case",
    [
        "header_beyond_body",
        "header_not_a_number",
        "size_disagrees",
        "bytes_missing",
        "bytes_left_over",
        "data_and_size",
    ],
)
def test_malformed_binary_requests_are_400(client: TestClient, case: str) -> None:
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    body, headers = binary_request(x)
    n = int(headers["inference-header-content-length"])
    head = json.loads(body[:n])
    if case == "header_beyond_body":
        headers["inference-header-content-length"] = str(len(body) + 1)
    elif case == "header_not_a_number":
        headers["inference-header-content-length"] = "-3"
    elif case == "size_disagrees":
        head["inputs"][0]["parameters"]["binary_data_size"] = 100
        body, headers = binary_request(x, head)
    elif case == "bytes_missing":
        body = body[:-4]
    elif case == "bytes_left_over":
        body += b"\0" * 4
    else:
        head["inputs"][0]["data"] = x.ravel().tolist()
        body, headers = binary_request(x, head)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_binary_body_over_the_limit_is_413(client: TestClient) -> None:
    x = np.zeros((8, 3, 32, 32), np.float32)  # 98 KB of floats; the client fixture allows 200 KB
    body, headers = binary_request(x, extra=b"\0" * 200_000)
    r = client.post("/v2/models/tiny/infer", content=body, headers=headers)
    assert r.status_code == 413 and isinstance(r.json()["error"], str)


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
