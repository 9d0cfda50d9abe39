"""The `dnd` command line (dnd/): its commands' own behaviour, and clear errors for bad arguments."""

import json
import time
from pathlib import Path

import pytest

from dnd.cli import main

from .pipeline import THREADS


def test_attack_cli_writes_sets_within_budget(tiny_bundle: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    from detector.attacks import load_attack_set

    assert (
        main(
            [
                "attack",
                "--model",
                str(tiny_bundle),
                "--data",
                str(tiny_data),
                "--attack",
                "fgsm,pgd",
                "--limit",
                "20",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "success rate" in capsys.readouterr().out
    for name in ("fgsm", "pgd"):
        s = load_attack_set(tmp_path / f"{name}.safetensors")
        assert s.name == name and s.params["eps"] == pytest.approx(8 / 255) and len(s.y) <= 20
        assert (s.x_adv - s.x_clean).abs().max() <= 8 / 255 + 1e-6 and s.x_adv.min() >= 0 and s.x_adv.max() <= 1


def test_attack_names_take_a_source_bundle_only_where_one_is_crafted_on(tmp_path: Path) -> None:
    """`--attack transfer-TI@PATH`: the method's name is case-blind, the path is kept as given; a source on an attack
    that runs on the network itself, or a path that is no bundle, is refused while parsing."""
    from dnd.args import attack_names

    from .conftest import write_detector_bundle

    b = write_detector_bundle(tmp_path / "B")
    assert attack_names(f"FGSM, transfer-TI@{b},") == ["fgsm", f"transfer-ti@{b}"]
    with pytest.raises(ValueError, match="only a transferred attack"):
        attack_names(f"pgd@{b}")
    with pytest.raises(ValueError, match="is no bundle"):
        attack_names(f"transfer@{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="unknown attack"):
        attack_names("bim@x")


def test_bad_data_path_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "cifar-10-batches-py" in err and "train/<class>" in err


def test_predict_prints_label_and_path(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from detector import ModelConfig, build_model, save_bundle

    save_bundle(build_model(ModelConfig(decoupled=True)).eval(), tmp_path / "b", {})
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    assert main(["predict", "--model", str(tmp_path / "b"), str(tmp_path / "red.png")]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["label"] in ModelConfig().classes and rec["resized_from"] == [40, 30]
    assert len(rec["open_filters_per_layer"]) == 18 and 0 <= rec["path_density"] <= 1
    assert "attack_score" not in rec  # no profiles in this bundle: classifier only


def test_predict_checks_every_path_before_printing_anything(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "ok.png")
    # a directory used to end in an IsADirectoryError traceback, after the earlier images' lines were printed; the
    # bundle does not exist either: the paths are checked before it would be loaded
    argv = ["predict", "--model", str(tmp_path / "no-bundle"), str(tmp_path / "ok.png"), str(tmp_path), "nosuch.jpg"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"expected image files, found: {tmp_path} (a directory), nosuch.jpg (not found)" in err


def test_predict_with_profiles_scores_the_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from .conftest import write_detector_bundle

    write_detector_bundle(tmp_path / "b")
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "g.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert main(["predict", "--model", str(tmp_path / "b"), str(tmp_path / "g.png")]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert isinstance(rec["is_adversarial"], bool) and rec["threshold"] == 0.0 and rec["resized_from"] is None
    assert main(["predict", "--model", str(tmp_path / "b"), str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["serve", "--port", "99999"], "argument --port: expected a TCP port from 1 to 65535, got '99999'"),
        (
            ["profiles", "--model", "m", "--data", "d", "--fpr", "1.5"],
            "argument --fpr: expected a rate from 0 to below 1 (0.05 = 5%), got '1.5'",
        ),
        (
            ["evaluate", "--model", "m", "--data", "d", "--out", "o", "--limit", "-5"],
            "argument --limit: expected a whole number >= 0, got '-5'",
        ),
        (
            ["attack", "--model", "m", "--data", "d", "--out", "o", "--threads", "two"],
            "argument --threads: expected a whole number >= 0, got 'two'",
        ),
    ],
)
def test_out_of_range_numbers_are_refused_while_parsing(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    # before any model, data or attack is touched: --fpr 1.5 used to be refused only after ~20 min of attacks
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_device_and_out_are_checked_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a-file").write_text("x")
    image = tmp_path / "i.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    # the bundle does not exist: each check must come before it would be loaded (a bad device used to end in a
    # torch RuntimeError traceback)
    cases = [
        (["predict", "--model", "none", "--device", "foo", str(image)], "--device 'foo': expected cpu, cuda or cuda:N"),
        (["predict", "--model", "none", "--device", "cuda:7", str(image)], "--device cuda:7: "),
        (
            ["evaluate", "--model", "none", "--data", "d", "--out", str(tmp_path / "a-file")],
            f"--out {tmp_path / 'a-file'} is a file; expected a directory",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "m", "--data", "d", "--out", "o", "--threshold", "nan"])
    assert "argument --threshold: expected a finite number, got 'nan'" in capsys.readouterr().err


def test_your_own_image_folder_trains_profiles_and_serves_with_its_class_names(tmp_path: Path) -> None:
    """Bring your own data with nothing but flags: a 3-class folder through `dnd train` (dense, then decoupled),
    `dnd profiles` and the service's POST /predict, whose labels are the folder's names."""
    import io

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from dnd.service.app import create_app
    from dnd.service.settings import Settings

    from .conftest import write_image_folder

    own = write_image_folder(tmp_path / "own", n_train=20, n_test=10, classes=("apple", "pear", "plum"))
    common = ["--data", str(own), "--batch-size", "16", "--threads", str(THREADS)]
    net = ["--blocks-per-stage", "1", "--widths", "8,16,16"]
    assert main(["train", *common, "--out", str(tmp_path / "dense"), "--epochs", "4", *net]) == 0
    decouple = ["--decouple", "--init", str(tmp_path / "dense"), "--epochs", "2", "--lambda-kd", "0"]
    assert main(["train", *common, "--out", str(tmp_path / "dec"), *decouple, "--target-ramp-epochs", "0.5"]) == 0
    cheap = ["--calib-attacks", "fgsm,pgd", "--calib-train-subset", "0", "--tree-iterations", "20"]
    assert main(["profiles", "--model", str(tmp_path / "dec"), "--data", str(own), *cheap]) == 0
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(buf, "PNG")
    with TestClient(create_app(Settings(model_dir=tmp_path / "dec", threads=1))) as c:
        for _ in range(500):
            if c.get("/readyz").status_code == 200:
                break
            time.sleep(0.01)
        r = c.post("/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
        p = r.json()["predictions"][0]
        assert r.status_code == 200 and p["label"] in ("apple", "pear", "plum")
        assert set(p["probabilities"]) == {"apple", "pear", "plum"} and isinstance(p["is_adversarial"], bool)
        meta = c.get("/v2/models/" + r.json()["model"]["name"]).json()
        assert meta["outputs"][0]["shape"] == [-1, 3]
