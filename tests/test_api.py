"""`load_detector` and `Detector.predict` (detector/api.py): outputs, batching, tracing, refusals of bad input and
mismatched profiles."""

from pathlib import Path

import pytest
import torch

from detector import load_detector
from detector.features import feature_count
from detector.profiles import PROFILES, load_profiles

from .pipeline import LAYERS


def test_predict_outputs_and_batched_equals_unbatched(tiny_bundle: Path) -> None:
    det = load_detector(tiny_bundle)
    x = torch.rand(13, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = det.predict(x), det.predict(x, batch_size=4)
    assert a.labels.shape == (13,) and a.probs.shape == (13, 10) and a.scores.shape == (13,)
    assert a.per_layer.shape == (13, LAYERS) and a.is_adversarial.dtype == torch.bool
    assert torch.allclose(a.probs.sum(1), torch.ones(13))
    assert torch.equal(a.is_adversarial, a.scores > det.threshold)
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.scores, b.scores, atol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(a.paths, b.paths))
    assert torch.equal(a.labels, det.model(x).argmax(1))  # det.model is the plain classifier
    # predict runs in eval mode whatever mode a caller left the model or one of its gates in (noise-free, exact z)
    for part in (det.model, next(m for m in det.model.modules() if "Gate" in type(m).__name__)):
        part.train()
        c = det.predict(x)
        assert not any(m.training for m in det.model.modules())
        assert torch.equal(c.scores, a.scores) and all(torch.equal(p, q) for p, q in zip(c.paths, a.paths))


def test_threshold_override(tiny_bundle: Path) -> None:
    x = torch.rand(8, 3, 32, 32)
    hi, lo = load_detector(tiny_bundle, threshold=1e9), load_detector(tiny_bundle, threshold=-1e9)
    assert hi.threshold == 1e9 and not hi.predict(x).is_adversarial.any() and lo.predict(x).is_adversarial.all()


@pytest.mark.parametrize(
    "x, msg",
    [
        (torch.rand(2, 3, 28, 28), "shape"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.full((2, 3, 32, 32), 2.0), r"\[0, 1\]"),
        ("img", "Tensor"),
        (
            torch.full((2, 3, 32, 32), 0.5).index_put_((torch.tensor(1),), torch.tensor(-0.1)),
            r"\[0, 1\], found range \[-0.100000001, 0.5\]",
        ),
        (
            torch.full((2, 3, 32, 32), 0.5).index_put_((torch.tensor(0),), torch.tensor(float("nan"))),
            r"\[0, 1\], found 3072 NaN value\(s\)",
        ),  # image 0: 3 x 32 x 32
        (
            torch.full((2, 3, 32, 32), 0.5).index_put_((torch.tensor(0),), torch.tensor(float("inf"))),
            r"\[0, 1\], found range \[0.5, inf\]",
        ),
    ],
)
def test_predict_rejects_bad_input_clearly(tiny_bundle: Path, x, msg: str) -> None:
    with pytest.raises((ValueError, TypeError), match=msg):
        load_detector(tiny_bundle).predict(x)


def test_profiles_of_other_weights_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    from detector.bundle import load_model, save_bundle

    other = tmp_path / "other"
    shutil.copytree(tiny_bundle, other)
    m = load_model(other)
    with torch.no_grad():
        m.fc.bias.add_(0.1)
    save_bundle(m, other, {})
    with pytest.raises(ValueError, match="rebuild with `dnd profiles"):
        load_detector(other)


def test_profiles_with_an_older_feature_set_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil
    from dataclasses import replace

    from detector.profiles import PathProfiles, save_profiles

    other = tmp_path / "old"
    shutil.copytree(tiny_bundle, other)
    p = load_profiles(other)
    # the older feature layout: without the likelihood columns (2L + 1 of them) and the gate logits
    n_lik = 2 * len(p.freq) + 1
    old = feature_count([f.shape[1] for f in p.freq]) - n_lik
    sc = replace(p.scorer, mean=p.scorer.mean[:old], scale=p.scorer.scale[:old], coef=p.scorer.coef[:old])
    meta = {k: v for k, v in p.meta.items() if k != "features"}  # path features only, as such profiles were
    save_profiles(PathProfiles(p.freq, p.counts, meta, sc), other, p.meta["data_fingerprint"])  # no gate_mean
    with pytest.raises(ValueError, match=f"fitted on {old} features, this version computes {old + n_lik}"):
        load_detector(other)


def test_dense_bundle_and_missing_profiles_give_clear_errors(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    dense = tiny_bundle.parent / "dense"
    with pytest.raises(ValueError, match="dense"):
        load_detector(dense)
    bare = tmp_path / "bare"
    shutil.copytree(tiny_bundle, bare)
    (bare / PROFILES).unlink()
    with pytest.raises(FileNotFoundError, match="dnd profiles"):
        load_detector(bare)


@pytest.mark.parametrize("n", [1, 5, 64])
def test_traced_forward_gives_the_same_predictions(tiny_bundle: Path, n: int) -> None:
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
    eager, traced = load_detector(tiny_bundle).predict(x), load_detector(tiny_bundle).trace().predict(x)
    assert torch.equal(eager.labels, traced.labels) and torch.allclose(eager.probs, traced.probs, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(eager.paths, traced.paths))
    assert torch.allclose(eager.scores, traced.scores, atol=1e-5)


def test_a_second_traced_detector_reuses_the_graph_with_its_own_weights(tmp_path: Path) -> None:
    from .conftest import write_detector_bundle

    a, b = write_detector_bundle(tmp_path / "a", seed=0), write_detector_bundle(tmp_path / "b", seed=1)
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = load_detector(a).trace()  # traces (or reuses a graph traced earlier in this process)
    second = load_detector(b).trace()
    assert second._traced is not first._traced
    for bundle_dir, traced in ((a, first), (b, second)):
        eager = load_detector(bundle_dir).predict(x)
        got = traced.predict(x)
        assert torch.equal(eager.labels, got.labels) and torch.allclose(eager.probs, got.probs, atol=1e-6)
        assert all(torch.equal(p, q) for p, q in zip(eager.paths, got.paths))
