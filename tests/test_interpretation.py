"""Interpretation: the path picture, the numbers behind the figures, and `dnd figures` end to end."""

import json
from pathlib import Path

import pytest
import torch

from detector.interpretation import path_svg, unusual_layers
from detector.interpretation.paths import class_paths, filter_states, parting_layer

from .conftest import RESNET20, write_detector_bundle, write_image_folder


def test_path_picture_colours_every_filter_by_its_agreement_with_the_signature() -> None:
    path = [torch.tensor([True, True, False, False]), torch.tensor([True, False])]
    freq = [torch.tensor([0.9, 0.2, 0.8, 0.1]), torch.tensor([0.6, 0.4])]  # signature: [1, 0, 1, 0], [1, 0]
    svg = path_svg(path, freq, "cat", 2.5, 1.0)
    for kind, n in (("both", 2), ("extra", 1), ("missing", 1), ("neither", 2)):
        assert svg.count(f": {kind}</title>") == n
    assert "&quot;cat&quot;" in svg and "over threshold 1.00" in svg


def test_unusual_layers_compare_with_what_the_profile_expects() -> None:
    freq = [torch.full((10,), 0.95), torch.full((10,), 0.95)]  # a clean image of the class differs on 0.5 filters
    path = [torch.ones(10, dtype=torch.bool), torch.zeros(10, dtype=torch.bool)]
    info = unusual_layers(path, freq)
    assert info[0]["hamming"] == 0 and not info[0]["unusual"]
    assert info[1]["hamming"] == 10 and info[1]["expected"] == pytest.approx(0.5) and info[1]["unusual"]


def test_filter_states_density_and_parting_layer_on_hand_built_paths() -> None:
    z = [torch.tensor([[1, 0, 1], [1, 0, 0]], dtype=torch.bool)]
    assert filter_states(z)[0].tolist() == [2, 0, 1]  # activated, silent, dynamic
    zs = [torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)] * 18
    cp = class_paths(zs, torch.tensor([0, 1]), ["a", "b"], list(range(0, 18, 2)))
    assert cp["density"] == {"a": 1.0, "b": 0.5} and cp["thickest"] == "a" and cp["thinnest"] == "b"
    assert [l["layer"] for l in cp["layers"]] == list(range(0, 18, 2))
    adv, src, tgt = (
        [torch.tensor([0.5])] * 4,
        [torch.tensor([0.4])] * 4,
        [torch.tensor([0.0])] * 2 + [torch.tensor([0.5])] * 2,
    )
    p = parting_layer(adv, src, tgt)
    assert p["parting_layer"] == 2 and p["to_target"][2] == 0


def test_figures_write_every_figure_and_its_data(tmp_path: Path) -> None:
    from dnd.cli import main

    data = write_image_folder(tmp_path / "data", n_train=10, n_test=20)
    bundle = write_detector_bundle(tmp_path / "b", **RESNET20)  # the figures need images of several predicted classes
    out = tmp_path / "fig"
    assert main(["figures", "--model", str(bundle), "--data", str(data), "--out", str(out), "--limit", "200"]) == 0
    for name in ("class_paths", "adversarial_paths", "path_embeddings", "filter_class", "filter_images"):
        assert (out / f"{name}.png").stat().st_size > 1000
        json.loads((out / f"{name}.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"class_paths", "adversarial_paths", "path_embeddings", "filter_class", "filter_images"}


@pytest.mark.parametrize(
    "name, firsts, stages",
    [
        ("resnet20", list(range(0, 18, 2)), [0, 6, 12]),  # a basic block's first conv; a stage's first block
        ("vgg11", list(range(6)), [0, 1, 3, 5]),  # a plain chain: every gated conv; each new resolution
    ],
)
def test_the_layers_figures_show_follow_the_architecture(name: str, firsts: list[int], stages: list[int]) -> None:
    from detector import arch_config, build_model
    from detector.interpretation.paths import first_convs, stage_starts

    costs = build_model(arch_config(name)).costs()
    assert first_convs(costs) == firsts and stage_starts(costs) == stages
