from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from detector import ModelConfig, build_model, load_model, save_bundle
from detector.bundle import read_config


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    m = build_model(ModelConfig(decoupled=True))
    with torch.no_grad():
        for u in m.units():
            u.gate.fc2.bias.copy_(torch.linspace(-1, 1, u.cout))
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # non-trivial running stats must survive the trip
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def test_round_trip_gives_identical_logits_and_paths(tmp_path: Path) -> None:
    m = _model()
    save_bundle(m, tmp_path / "b", {"seed": 7})
    loaded = load_model(tmp_path / "b")
    ref = m.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())  # every tensor back exactly
    assert loaded.stem[0].weight.is_contiguous(memory_format=torch.channels_last)  # the layout it loads in
    x = torch.rand(10, 3, 32, 32)
    a, b = m.to(memory_format=torch.channels_last).forward_paths(x), loaded.forward_paths(x)  # same layout: same maths
    assert torch.equal(a.logits, b.logits) and all(torch.equal(p, q) for p, q in zip(a.z, b.z))
    cfg = read_config(tmp_path / "b")
    assert cfg["seed"] == 7 and cfg["model"]["decoupled"] is True and "torch" in cfg["libraries"]
    assert not loaded.training


def test_extra_or_missing_keys_are_refused(tmp_path: Path) -> None:
    save_bundle(_model(), tmp_path / "b", {})
    w = tmp_path / "b" / "model.safetensors"
    state = load_file(str(w))
    save_file({**state, "intruder": torch.zeros(1)}, str(w))
    with pytest.raises(ValueError, match="unexpected keys.*intruder"):
        load_model(tmp_path / "b")
    del state["fc.bias"]
    save_file(state, str(w))
    with pytest.raises(ValueError, match="missing keys.*fc.bias"):
        load_model(tmp_path / "b")


def test_missing_bundle_says_what_a_bundle_is(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors and config.json"):
        load_model(tmp_path)


def test_dnd_convert_stores_half_precision_weights_that_load_into_the_same_network(tmp_path: Path) -> None:
    """`dnd convert`: conv and linear weights in float16 (about half the file), biases and batch-norm statistics
    exact, logits within half-precision rounding; config.json says so and names the weights it came from. A folder
    with profiles of other weights is refused."""
    from dnd.cli import main

    from .conftest import write_detector_bundle

    m = _model()
    save_bundle(m, tmp_path / "b", {"seed": 7})
    assert main(["convert", "--model", str(tmp_path / "b"), "--out", str(tmp_path / "h")]) == 0
    full, half = (
        load_file(str(tmp_path / "b" / "model.safetensors")),
        load_file(str(tmp_path / "h" / "model.safetensors")),
    )
    assert {k: v.dtype for k, v in half.items() if v.dim() >= 2} == {
        k: torch.float16 for k, v in full.items() if v.dim() >= 2
    }
    assert all(torch.equal(half[k], v) for k, v in full.items() if v.dim() < 2)  # biases, BN stats: untouched
    size = lambda d: (d / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "h") < 0.6 * size(tmp_path / "b")
    loaded, x = load_model(tmp_path / "h"), torch.rand(8, 3, 32, 32)
    assert all(v.dtype == torch.float32 for v in loaded.state_dict().values() if v.is_floating_point())
    with torch.no_grad():
        ref, got = load_model(tmp_path / "b")(x), loaded(x)
    assert torch.allclose(got, ref, atol=1e-2 * float(ref.abs().max()))
    cfg, before = read_config(tmp_path / "h"), read_config(tmp_path / "b")
    assert cfg["weights_dtype"] == "float16" and cfg["seed"] == 7
    assert cfg["converted_from"]["weights_sha256"] == before["weights_sha256"] != cfg["weights_sha256"]
    with_profiles = write_detector_bundle(tmp_path / "p")
    assert main(["convert", "--model", str(with_profiles), "--out", str(with_profiles)]) != 0
    assert read_config(with_profiles).get("weights_dtype") == "float32"  # left as it was
