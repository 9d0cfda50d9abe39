"""Bring your own data and network: a 3-class image folder at 20 x 20 goes through `dnd train` (dense, then the
decoupling fine-tune), `dnd profiles`, the detector, one HTTP request, an explanation and the OIP metadata, for a tiny
instance of every registered family and for a user's own CNN (tests/user_cnn.py), with nothing but flags."""

import json
from pathlib import Path

import pytest
import torch

from dnd.cli import main
from dnd.service.settings import Settings

from .conftest import write_image_folder
from .pipeline import CHEAP, TINY, dnd_train
from .service.conftest import client_for, png

CLASSES = ("apple", "pear", "plum")
SIZE = 20
ARCHS = {
    "resnet": ["--arch", "resnet20", "--blocks-per-stage", "1", "--widths", "4,8,8"],
    "vgg": ["--arch", "vgg11", "--widths", "4,8,8,16,16"],
    "user": ["--arch", "tests.user_cnn:small_cnn"],
}


@pytest.fixture(scope="module")
def fruit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("fruit"), n_train=30, n_test=10, classes=CLASSES, size=SIZE)


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_a_network_trains_profiles_and_serves_on_its_own_data(family: str, fruit: Path, tmp_path: Path) -> None:
    from detector import load_detector

    dense = dnd_train(fruit, tmp_path / "dense", "--epochs", "6", "--lr", "0.05", *TINY, *ARCHS[family])
    dec = dnd_train(
        fruit, tmp_path / "dec", "--decouple", "--init", str(dense), "--epochs", "2", "--lambda-kd", "0", *TINY
    )
    cfg = json.loads((dec / "config.json").read_text())["model"]
    assert cfg["classes"] == list(CLASSES) and cfg["input_size"] == SIZE and cfg["decoupled"]
    assert main(["profiles", "--model", str(dec), "--data", str(fruit), "--calib-limit", "0", *CHEAP]) == 0

    det = load_detector(dec)
    assert det.image_shape == (3, SIZE, SIZE)
    pred = det.predict(torch.rand(4, 3, SIZE, SIZE))
    assert pred.probs.shape == (4, 3) and len(pred.paths) == len(det.model.units())
    with pytest.raises(ValueError, match=f"expected images of shape \\(N, 3, {SIZE}, {SIZE}\\)"):
        det.predict(torch.rand(1, 3, 32, 32))
    # the open-filters-only engine, traced as the service runs it: the same detector outputs
    fast = load_detector(dec, engine="sparse").trace().predict(x := torch.rand(6, 3, SIZE, SIZE))
    slow = det.predict(x)
    torch.testing.assert_close(fast.logits, slow.logits, rtol=0, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(fast.paths, slow.paths))

    assert main(["stats", "--model", str(dec), "--data", str(fruit), "--robust-eps", "0"]) == 0
    stats = json.loads((dec / "metrics.json").read_text())
    assert 0 < stats["flops_ratio"] <= 1 and stats["filter_states"]["total"] == sum(u.cout for u in det.model.units())
    assert main(["figures", "--model", str(dec), "--data", str(fruit), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "class_paths.png").is_file()

    c = client_for(Settings(model_dir=dec, threads=1, max_wait_ms=5))
    try:
        r = c.post("/predict", content=png(37, 29, seed=3), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        p = r.json()["predictions"][0]
        assert p["label"] in CLASSES and p["resized_from"] == [37, 29]
        svg = c.post("/explain", content=png(37, 29, seed=3), headers={"content-type": "image/png"})  # the same image
        assert svg.status_code == 200 and f"&quot;{p['label']}&quot;" in svg.text
        assert c.get("/v1/model").json()["input_shape"] == [3, SIZE, SIZE]
        meta = c.get(f"/v2/models/{dec.name}").json()
        assert meta["inputs"][0]["shape"] == [-1, 3, SIZE, SIZE] and meta["outputs"][0]["shape"] == [-1, 3]
    finally:
        c.__exit__(None, None, None)


def test_a_bundle_refuses_data_of_other_classes_naming_both(fruit: Path, tmp_path: Path, capsys) -> None:
    other = write_image_folder(tmp_path / "other", n_train=4, n_test=2, classes=("ant", "bee"), size=SIZE)
    dense = dnd_train(fruit, tmp_path / "dense", "--epochs", "1", *TINY, *ARCHS["vgg"])
    capsys.readouterr()
    assert main(["stats", "--model", str(dense), "--data", str(other), "--robust-eps", "0"]) == 2
    err = capsys.readouterr().err
    assert "apple" in err and "ant" in err


def test_the_evaluation_protocol_runs_on_a_users_own_network(fruit: Path, tmp_path: Path) -> None:
    """`dnd evaluate` end to end (every attack group, the corruptions, the baselines including the Lee upper bound,
    the adaptive attack through straight-through gates) on a user's CNN at 20 x 20 (~10 s on 2 cores)."""
    dense = dnd_train(fruit, tmp_path / "dense", "--epochs", "6", "--lr", "0.05", *TINY, *ARCHS["user"])
    dec = dnd_train(
        fruit, tmp_path / "dec", "--decouple", "--init", str(dense), "--epochs", "2", "--lambda-kd", "0", *TINY
    )
    assert main(["profiles", "--model", str(dec), "--data", str(fruit), "--calib-limit", "0", *CHEAP]) == 0
    out = tmp_path / "report"
    # the tiny evaluation flags of tests/test_evaluation.py
    tiny = "--slow-limit 10 --adaptive-limit 10 --adaptive-eps 4,8 --adaptive-steps 3 --adaptive-restarts 2"
    tiny += " --square-queries 10 --no-autoattack --lee-limit 20 --bootstrap 20"
    args = ["--attacks", "fgsm,pgd,cw", "--selection", "pgdl2,transfer", "--unseen", "eadl1", "--source", str(dense)]
    args += ["--corruptions", "gaussian_noise,pixelate", *tiny.split(), "--out", str(out)]
    assert main(["evaluate", "--model", str(dec), "--data", str(fruit), *args]) == 0
    r = json.loads((out / "report.json").read_text())
    assert list(r["attacks"]) == ["fgsm", "pgd", "cw", "pgdl2", "transfer", "eadl1"] and 0 <= r["clean_accuracy"] <= 1
