"""Engine choice (detector/engines.py): the faster of the masked network and the open-filters engine serves, both give
the same detector outputs, and the choice follows the measured time, not the network's family."""

import time
from pathlib import Path

import pytest
import torch

from detector import load_detector
from detector.api import Detector
from detector.engines import pick_engine, probe_images

from .conftest import write_detector_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detector_bundle(tmp_path_factory.mktemp("engines") / "b")


def test_probe_images_are_smooth_and_in_range() -> None:
    x = probe_images(2, 24)
    assert x.shape == (2, 3, 24, 24) and x.min() >= 0 and x.max() <= 1
    # neighbouring pixels differ far less than independent uniform pixels would (mean |diff| 1/3)
    assert (x[..., 1:] - x[..., :-1]).abs().mean() < 0.05


@pytest.mark.parametrize("traced", [False, True])
def test_switching_engines_keeps_the_outputs(bundle: Path, traced: bool) -> None:
    det = load_detector(bundle)
    if traced:
        det.trace()
    x = torch.rand(5, 3, 32, 32)
    masked = det.predict(x)
    sparse = det.use_engine("sparse").predict(x)
    assert det.engine == "sparse" and (det.info()["engine"]["traced"] is traced)
    torch.testing.assert_close(sparse.logits, masked.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(sparse.scores, masked.scores, rtol=0, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(sparse.paths, masked.paths))
    with pytest.raises(ValueError, match="expected masked or sparse"):
        det.use_engine("fast")


@pytest.mark.parametrize("slow", ["masked", "sparse"])
def test_the_faster_engine_is_chosen(bundle: Path, slow: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make one engine slow by 20 ms a call: whichever it is, the other one serves."""
    predict = Detector.predict

    def timed(self: Detector, x: torch.Tensor, batch_size: int = 512):
        if self.engine == slow:
            time.sleep(0.02)
        return predict(self, x, batch_size)

    monkeypatch.setattr(Detector, "predict", timed)
    det = load_detector(bundle).trace()
    choice = pick_engine(det, repeats=3)
    fast = "sparse" if slow == "masked" else "masked"
    assert choice.engine == det.engine == fast
    assert choice.ms[slow] > choice.ms[fast] + 15
    assert det.info()["engine"]["timing"]["engine"] == fast


def test_one_candidate_is_used_without_timing(bundle: Path) -> None:
    det = load_detector(bundle, engine="sparse")
    choice = pick_engine(det, candidates=("masked",))
    assert choice.engine == det.engine == "masked" and choice.ms == {}


def test_a_network_without_an_open_filters_engine_serves_masked(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def none(model: torch.nn.Module) -> torch.nn.Module:
        raise ValueError("no open-filters engine")

    monkeypatch.setattr("detector.api.open_filters_engine", none)
    det = load_detector(bundle)
    assert not det.supports("sparse")
    assert pick_engine(det).engine == "masked"
