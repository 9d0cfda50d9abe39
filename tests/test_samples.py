"""`dnd samples`: a bundle's own sample images for the web page (detector/samples.py), made on its weights from its
data, and never served once the weights change."""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detector.bundle import load_model
from detector.samples import read_samples, write_samples
from dnd.cli import main


def test_samples_are_made_on_the_bundles_own_weights_and_data(tiny_bundle: Path, tiny_data: Path, tmp_path: Path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    assert main(["samples", "--model", str(bundle), "--data", str(tiny_data), "--n", "3"]) == 0
    items = read_samples(bundle)
    model = load_model(bundle)
    classes = model.cfg.classes
    assert {s["kind"] for s in items} == {"clean", "attacked"} and len(items) <= 6
    for s in items:
        img = np.asarray(Image.open(bundle / "samples" / s["file"]))
        assert img.shape == (model.cfg.input_size, model.cfg.input_size, 3) and img.dtype == np.uint8
        with torch.no_grad():
            img = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255
            label = classes[int(model(img).argmax(1))]
        if s["kind"] == "clean":  # a correctly classified test image, captioned with its class
            assert s["label"] == label and s["caption"] == f"clean {label}"
        else:  # still fooled once rounded to 8 bits: predicted as the manifest says, not as its true class
            assert label == s["predicted"] != s["label"] and s["caption"] == f"{s['label']}, attacked"


def test_samples_of_other_weights_are_not_served(tmp_path: Path) -> None:
    from .conftest import write_detector_bundle

    bundle = write_detector_bundle(tmp_path / "b")
    img = torch.zeros(3, 32, 32, dtype=torch.uint8)
    write_samples(bundle, [(img, "a/b c")], [(img, "x", "y"), (img, "x", "y")])
    items = read_samples(bundle)
    # class names become safe file names; two images of the same pair both kept
    assert [s["file"] for s in items] == ["clean-a_b_c.png", "attacked-x-as-y.png", "attacked-x-as-y-2.png"]
    manifest = json.loads((bundle / "samples" / "samples.json").read_text())
    assert read_samples(bundle, manifest["model_weights_sha256"]) == items
    assert read_samples(bundle, "0" * 64) == []  # the caller's weights are not those the samples were made on
    write_detector_bundle(bundle, seed=1)  # retrained: new weights, the old samples stay on disk
    assert read_samples(bundle) == []
    assert read_samples(tmp_path / "none") == []
