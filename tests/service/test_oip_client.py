"""Open Inference Protocol v2 conformance: the real `tritonclient` HTTP client, in its own venv (.venv-oip, made
by `make test` from tests/service/oip-client.txt), runs its example flow (oip_client_flow.py) against a live
uvicorn server, with the client's defaults (binary tensors both ways), JSON tensors, an output subset, a version
path, and bad requests read back as client exceptions carrying the server's message."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import load_detector
from dnd.service.oip import EXTENSIONS
from dnd.service.settings import Settings

from .conftest import serving

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PY = Path(os.environ.get("DND_OIP_CLIENT_PYTHON", ROOT / ".venv-oip" / "bin" / "python"))


@pytest.fixture(scope="module")
def flow(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, np.ndarray]:
    if not CLIENT_PY.exists():
        pytest.skip(f"no tritonclient venv at {CLIENT_PY}: `make test` makes it (or set DND_OIP_CLIENT_PYTHON)")
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    npy = tmp_path_factory.mktemp("oip") / "x.npy"
    np.save(npy, x)
    with serving(Settings(model_dir=bundle, threads=1)) as port:
        r = subprocess.run(
            [str(CLIENT_PY), str(Path(__file__).with_name("oip_client_flow.py")), f"127.0.0.1:{port}", "tiny", npy],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout), x


def test_health_and_metadata(flow: tuple[dict, np.ndarray]) -> None:
    out, _ = flow
    assert out["live"] and out["ready"] and out["model_ready"] and out["versioned_ready"]
    assert out["server"]["name"] == "dnd-detector" and out["server"]["extensions"] == EXTENSIONS
    assert "binary_tensor_data" in out["server"]["extensions"]
    assert out["model"]["name"] == "tiny" and out["model"]["inputs"][0]["shape"] == [-1, 3, 32, 32]
    assert out["versioned_model"] == out["model"]


def test_binary_and_json_tensors_give_the_detectors_answer(flow: tuple[dict, np.ndarray], bundle: Path) -> None:
    out, x = flow
    want = load_detector(bundle).predict(torch.from_numpy(x))
    names = ["probabilities", "class_index", "attack_score", "is_adversarial"]
    assert all(out["defaults"]["binary"][n] for n in names)  # the client asks for binary outputs by default
    assert not any(out["json"]["binary"].values())
    for case in ("defaults", "json", "versioned"):
        v = out[case]["values"]
        assert list(v) == names and out[case]["id"] == "r1"
        assert v["class_index"] == want.labels.tolist() and v["is_adversarial"] == want.is_adversarial.tolist()
        np.testing.assert_allclose(v["probabilities"], want.probs.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(v["attack_score"], want.scores.numpy(), rtol=1e-6, atol=1e-7)


def test_requested_outputs_subset(flow: tuple[dict, np.ndarray]) -> None:
    out, _ = flow
    assert out["subset"]["binary"] == {"attack_score": False, "class_index": True}
    assert out["subset"]["values"]["class_index"] == out["json"]["values"]["class_index"]


def test_bad_requests_surface_as_client_exceptions_with_the_servers_message(flow: tuple[dict, np.ndarray]) -> None:
    errors = flow[0]["errors"]
    assert "expected values in [0, 1]" in errors["out_of_range"]
    assert "unknown model 'no-such-model'" in errors["unknown_model"]
    assert "expected outputs among" in errors["unknown_output"]
