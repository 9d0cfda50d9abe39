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
