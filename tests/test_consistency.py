"""Path consistency, output confidence and the input residual (detector/consistency.py, detector/inputs.py):
transforms, features that do not depend on the batch, and gradients the adaptive attack can follow."""

import pytest
import torch

from detector.consistency import (
    RESIDUAL_QUANTILES,
    TRANSFORMS,
    FeatureSpec,
    confidence_features,
    median3,
    residual_features,
    transform,
)
from detector.corruptions import jpeg
from detector.features import feature_count

from .conftest import TINY_LAYERS, write_detector_bundle

ALL = {"transforms": list(TRANSFORMS), "confidence": True, "residual": True}


def test_transforms_are_deterministic_images_of_the_same_shape() -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for name in TRANSFORMS:
        out = transform(name, x)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1, name
        assert torch.equal(out, transform(name, x)), name
        assert torch.equal(transform(name, x[1:2]), out[1:2]), f"{name} depends on the batch"
        assert transform(name, x[:0]).shape == (0, 3, 16, 16), name
    assert torch.equal(transform("jpeg75", x), jpeg(x, 75))
    with pytest.raises(ValueError, match="unknown transform 'blur'"):
        transform("blur", x)


def test_median3_is_the_median_of_each_reflect_padded_neighbourhood() -> None:
    g = torch.Generator().manual_seed(1)
    # continuous values, and values on a coarse grid (many ties: 8-bit pixels are full of them)
    for x in (torch.rand(2, 3, 5, 6, generator=g), (4 * torch.rand(2, 3, 5, 6, generator=g)).round() / 4):
        xp = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
        want = torch.empty_like(x)
        for i in range(5):
            for j in range(6):
                want[..., i, j] = xp[..., i : i + 3, j : j + 3].reshape(2, 3, 9).median(-1).values
        assert torch.equal(median3(x), want)
    x = torch.rand(1, 1, 4, 4, generator=g, requires_grad=True)
    (g_x,) = torch.autograd.grad(median3(x).sum(), x)
    assert g_x.sum() == pytest.approx(16) and (g_x >= 0).all()  # each output pixel's gradient lands on its inputs


def test_bpda_passes_the_identity_gradient_through_jpeg() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    out = transform("jpeg75", x, bpda=True)
    assert torch.allclose(out.detach(), jpeg(x.detach(), 75), atol=1e-6)
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_spec_counts_and_checks() -> None:
    spec = FeatureSpec(("jpeg75", "median"), True)
    assert spec.extra_columns(6) == 2 * (2 * 6 + 2) + 4
    assert spec.families() == ["path", "consistency", "confidence"]
    assert FeatureSpec.from_dict(spec.to_dict()) == spec and FeatureSpec.from_dict(None) == FeatureSpec()
    with pytest.raises(ValueError, match="expected distinct names"):
        FeatureSpec(("jpeg75", "jpeg75")).check()
    with pytest.raises(ValueError, match="precision 'float16'"):
        FeatureSpec(("median",), precision="float16").check()
    # profiles written before the precision field read as float32, before the residual field read no residual
    assert FeatureSpec.from_dict({"transforms": ["median"]}).precision == "float32"
    assert not FeatureSpec.from_dict({"transforms": ["median"]}).residual
    both = FeatureSpec(("median",), True, True)
    assert both.extra_columns(6) == (2 * 6 + 2) + 4 + 6 and both.families()[-1] == "residual"
    assert FeatureSpec.from_dict(both.to_dict()) == both


def test_residual_columns_are_quantiles_of_the_median_residual_and_see_a_sign_perturbation() -> None:
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 12, 12, generator=g)
    f = residual_features(x)
    r = (x - median3(x)).abs().flatten(1)
    assert f.shape == (3, len(RESIDUAL_QUANTILES) + 1)
    for i in range(3):
        want = [float(torch.quantile(r[i], q)) for q in RESIDUAL_QUANTILES] + [float(r[i].mean())]
        assert f[i].tolist() == pytest.approx(want, abs=1e-6)
    assert torch.equal(residual_features(x[1:2]), f[1:2])  # per image
    assert residual_features(x[:0]).shape == (0, len(RESIDUAL_QUANTILES) + 1)
    # a flat image has none; under a random-sign Linf perturbation of 8/255 a pixel outvoted by its neighbourhood
    # (P = 93/256: 5 or more of its 8 neighbours of the other sign) is 16/255 off its median, the others 0
    flat = torch.full((1, 3, 32, 32), 0.5)
    sign = torch.randint(0, 2, flat.shape, generator=g).float() * 2 - 1
    assert residual_features(flat).abs().max() == 0
    f = residual_features(flat + 8 / 255 * sign)[0]
    assert float(f[3]) == pytest.approx(16 / 255, abs=1e-6) and float(f[1]) == 0  # 75% and 25% quantiles
    assert float(f[-1]) == pytest.approx(93 / 256 * 16 / 255, rel=0.1)
    x.requires_grad_(True)
    (g_x,) = torch.autograd.grad(residual_features(x).sum(), x)
    assert float(g_x.abs().sum()) > 0  # the adaptive attack can descend it


def test_confidence_columns() -> None:
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    f = confidence_features(logits, torch.tensor([[3.0, 4.0], [0.0, 0.0]]))
    assert torch.allclose(f[:, 0], logits.softmax(1).amax(1))
    assert torch.allclose(f[:, 1], logits.logsumexp(1))
    assert torch.equal(f[:, 2], torch.tensor([2.0, 0.0])) and torch.equal(f[:, 3], torch.tensor([5.0, 0.0]))


def test_detector_reads_the_families_its_profiles_name_the_same_batched_and_per_image(tmp_path) -> None:
    from detector import load_detector

    det = load_detector(write_detector_bundle(tmp_path / "b", features=ALL))
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    p = det.predict(x)
    widths = [f.shape[1] for f in det.profiles.freq]
    everything = FeatureSpec(tuple(TRANSFORMS), True, True)
    assert p.inputs.shape == (5, feature_count(widths, True) + everything.extra_columns(6))
    assert torch.allclose(p.scores, det.profiles.scorer.score(p.inputs))
    one = torch.cat([det.predict(x[i : i + 1]).inputs for i in range(5)])
    assert torch.allclose(one, p.inputs, atol=1e-4), (one - p.inputs).abs().max()
    # the consistency block is not constant: the transforms moved some paths
    assert p.inputs[:, feature_count(widths, True) :].std(0).gt(0).any()
    reads = det.info()["score_reads"]
    assert reads["families"] == ["path", "consistency", "confidence", "residual"]
    assert list(reads["transforms"]) == list(TRANSFORMS) and reads["residual"]
    assert len(det.profiles.freq) == TINY_LAYERS


def test_surrogate_gradient_reaches_the_image_through_the_consistency_columns(tmp_path) -> None:
    """Only the consistency (or residual) columns weigh in the surrogate: its gradient in x is non-zero, through the
    differentiable transforms and, by BPDA, through JPEG, and through the residual's quantiles."""
    from detector import load_detector
    from detector.adaptive.objective import DetectorObjective

    for spec in ({"transforms": ["jpeg75"]}, {"transforms": ["median", "noise"]}, {"residual": True}):
        name = "-".join(spec.get("transforms", ["residual"]))
        det = load_detector(write_detector_bundle(tmp_path / name, features=spec))
        sc = det.profiles.scorer
        n_path = feature_count([f.shape[1] for f in det.profiles.freq], True)
        sc.coef[:n_path] = 0  # the path columns no longer count
        obj = DetectorObjective(det)
        x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
        _, margin = obj(x, torch.tensor([0, 1, 2, 3]), relax=1.0)
        margin.sum().backward()
        assert x.grad is not None and float(x.grad.abs().sum()) > 0, spec


def test_traced_and_sparse_engines_score_the_stacked_batch_alike(tmp_path) -> None:
    from detector import load_detector

    bundle = write_detector_bundle(tmp_path / "b", features={"transforms": ["median", "shift"], "confidence": True})
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    want = load_detector(bundle).predict(x)
    for det in (load_detector(bundle).trace(), load_detector(bundle, engine="sparse")):
        got = det.predict(x)
        assert torch.equal(got.labels, want.labels) and torch.allclose(got.inputs, want.inputs, atol=1e-4)
        assert torch.allclose(got.scores, want.scores, atol=1e-4)


def test_bfloat16_copies_keep_the_images_own_outputs_and_do_not_depend_on_batch_or_trace(tmp_path) -> None:
    """precision bfloat16: the images run in float32 (labels, paths, path features and confidence exactly as with
    float32), only the transformed copies in bfloat16; eager, traced and sparse, batched or not, give the same."""
    from detector import load_detector

    spec = {"transforms": ["median", "shift"], "confidence": True}
    b32 = write_detector_bundle(tmp_path / "f32", features=spec)
    b16 = write_detector_bundle(tmp_path / "bf16", features={**spec, "precision": "bfloat16"})
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    full, low = load_detector(b32).predict(x), load_detector(b16).predict(x)
    widths = [f.shape[1] for f in load_detector(b32).profiles.freq]
    n_path = feature_count(widths, True)
    assert torch.equal(low.labels, full.labels)
    torch.testing.assert_close(low.logits, full.logits, rtol=0, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(low.paths, full.paths))
    torch.testing.assert_close(low.inputs[:, :n_path], full.inputs[:, :n_path], rtol=0, atol=1e-5)  # batch rounding
    torch.testing.assert_close(low.inputs[:, -4:], full.inputs[:, -4:], rtol=0, atol=1e-5)  # confidence
    assert not torch.equal(low.inputs, full.inputs)  # the copies really ran in bfloat16
    assert load_detector(b16).info()["score_reads"]["transform_precision"] == "bfloat16"
    for det in (load_detector(b16).trace(), load_detector(b16)):
        got = det.predict(x)
        one = torch.cat([det.predict(x[i : i + 1]).inputs for i in range(len(x))])
        torch.testing.assert_close(got.inputs, low.inputs, rtol=0, atol=1e-4)
        torch.testing.assert_close(one, low.inputs, rtol=0, atol=1e-4)
    # the open-filters engine folds BatchNorm into the convs, which bfloat16 rounds otherwise: batch-independent
    # itself, and within bfloat16 rounding of the masked network
    sparse = load_detector(b16, engine="sparse").trace()
    got = sparse.predict(x)
    one = torch.cat([sparse.predict(x[i : i + 1]).inputs for i in range(len(x))])
    torch.testing.assert_close(one, got.inputs, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.inputs, low.inputs, rtol=0, atol=1e-2)


def test_a_narrower_spec_reads_its_own_inputs_out_of_a_wider_ones_layout(tmp_path) -> None:
    """columns_in (the ablation and the selection study read fewer families out of wider inputs): the picked
    columns equal the inputs the narrower spec computes itself."""
    from dataclasses import replace

    from detector import load_detector
    from detector.inputs import inputs_of_images

    det = load_detector(write_detector_bundle(tmp_path / "b", features=ALL))
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    wide = FeatureSpec(tuple(TRANSFORMS), True, True)
    n_path = feature_count([f.shape[1] for f in det.profiles.freq], True)

    def inputs(spec: FeatureSpec) -> torch.Tensor:
        p = replace(det.profiles, meta={**det.profiles.meta, "features": spec.to_dict()})
        return inputs_of_images(det.model, p, x)[1]

    everything = inputs(wide)
    narrows = (FeatureSpec(), FeatureSpec(("shift", "median")), FeatureSpec(("noise",), True))
    for narrow in (*narrows, FeatureSpec(("median",), residual=True), FeatureSpec(residual=True)):
        cols = narrow.columns_in(wide, n_path, TINY_LAYERS)
        assert torch.allclose(everything[:, cols], inputs(narrow), atol=1e-5)
    with pytest.raises(ValueError, match="does not lay out"):
        FeatureSpec(("jpeg75",), True).columns_in(FeatureSpec(("jpeg75",)), n_path, TINY_LAYERS)
    with pytest.raises(ValueError, match="does not lay out"):
        FeatureSpec(residual=True).columns_in(FeatureSpec(("jpeg75",), True), n_path, TINY_LAYERS)


def test_bfloat16_profiles_warn_where_the_device_emulates_it(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detector import load_detector

    b16 = write_detector_bundle(tmp_path / "b", features={"transforms": ["median"], "precision": "bfloat16"})
    monkeypatch.setattr("detector.api.native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match="emulates"):
        load_detector(b16)
    monkeypatch.setattr("detector.api.native_bf16", lambda device: True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_detector(b16)


def test_an_image_its_transform_leaves_unchanged_has_nothing_moved(tmp_path) -> None:
    """A mirror-symmetric image under `flip`, a constant one under `shift`: the path, the gate logits and the
    softmax do not move (those 2 L + 1 columns are 0) and the margin is the image's own; a generic image moves."""
    from detector import load_detector

    layers = TINY_LAYERS
    for name, make in (
        ("flip", lambda x: (x + x.flip(3)) / 2),
        ("shift", lambda x: x.mean((2, 3), keepdim=True).expand_as(x).contiguous()),
    ):
        det = load_detector(write_detector_bundle(tmp_path / name, features={"transforms": [name]}))
        x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(7))
        n_path = det.predict(x).inputs.shape[1] - (2 * layers + 2)
        still, moved = det.predict(make(x)), det.predict(x)
        cols = still.inputs[:, n_path:]
        assert torch.equal(cols[:, : 2 * layers + 1], torch.zeros(4, 2 * layers + 1)), name
        top2 = still.logits.topk(2, 1).values
        torch.testing.assert_close(cols[:, -1], top2[:, 0] - top2[:, 1], rtol=0, atol=1e-5)
        assert float(moved.inputs[:, n_path : n_path + 2 * layers + 1].abs().sum()) > 0, name


def test_copies_run_in_a_pool_thread_give_the_same_outputs_and_gradients(tmp_path) -> None:
    """run_stacked with a pool runs the bfloat16 copies' forward in another thread, beside the images' own: the same
    numbers, eager (autocast) and traced, and in grad mode the gradient still reaches every stacked row."""
    from concurrent.futures import ThreadPoolExecutor

    from detector import load_detector
    from detector.consistency import run_stacked, stack

    det = load_detector(
        write_detector_bundle(tmp_path / "b", features={"transforms": ["median", "shift"], "precision": "bfloat16"})
    )
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    xs, spec = stack(x, det.spec), det.spec
    net = det._network()
    with ThreadPoolExecutor(1) as pool:
        with torch.inference_mode():
            for fwd, low in ((net, None), (det.trace()._traced, det._traced_low)):
                alone, beside = run_stacked(fwd, xs, 3, spec, low), run_stacked(fwd, xs, 3, spec, low, pool)
                for a, b in zip(alone, beside):
                    for u, v in zip(a, b) if isinstance(a, list) else [(a, b)]:
                        assert torch.equal(u, v) and not v.requires_grad
        xg = xs.clone().requires_grad_(True)
        logits = run_stacked(net, xg, 3, spec, None, pool)[0]
        logits.logsumexp(1).sum().backward()
        assert xg.grad is not None and bool((xg.grad.flatten(1).abs().sum(1) > 0).all())
