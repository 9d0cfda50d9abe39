"""Path features (detector/features.py): distances, gate-logit deviations, naive-Bayes likelihoods, gradients."""

import math

import pytest
import torch

from detector.features import PathLikelihood, feature_count, likelihood_features, path_distances, path_features


def test_soft_distances_equal_hard_ones_on_binary_paths() -> None:
    g = torch.Generator().manual_seed(0)
    z = [torch.rand(6, c, generator=g) > 0.5 for c in (4, 8)]
    freq = [torch.rand(3, c, generator=g) for c in (4, 8)]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    sig = [f >= 0.5 for f in freq]
    for hard, soft in zip(path_distances(z, labels, sig), path_distances([zl.float() for zl in z], labels, sig)):
        assert torch.equal(hard, soft)
    assert torch.equal(path_features(z, labels, freq), path_features([zl.float() for zl in z], labels, freq))
    # the all-layers-at-once features are the per-layer definitions, column by column
    ref = [s[labels] for s in sig]
    ham = torch.stack([(zl != r).float().mean(1) for zl, r in zip(z, ref)], 1)
    jac = torch.stack([1 - (zl & r).sum(1) / (zl | r).sum(1).clamp_min(1) for zl, r in zip(z, ref)], 1)
    jac[torch.stack([(zl | r).sum(1) == 0 for zl, r in zip(z, ref)], 1)] = 0
    dev = torch.cat([zl.float() - f[labels] for zl, f in zip(z, freq)], 1)
    assert torch.equal(path_features(z, labels, freq)[:, : 4 + 12], torch.cat([ham, jac, dev], 1))
    v = [torch.rand(6, c, generator=g).requires_grad_(True) for c in (4, 8)]  # soft paths: gradients reach every filter
    path_features(v, labels, freq)[:, :4].sum().backward()
    assert all(vl.grad is not None and bool((vl.grad != 0).all()) for vl in v)


def test_gate_logit_features_are_deviations_from_the_class_mean() -> None:
    g = torch.Generator().manual_seed(3)
    widths = (4, 8)
    z = [torch.rand(5, c, generator=g) > 0.5 for c in widths]
    freq = [torch.rand(3, c, generator=g) for c in widths]
    s = [torch.randn(5, c, generator=g) for c in widths]
    gm = [torch.randn(3, c, generator=g) for c in widths]
    labels = torch.tensor([0, 2, 1, 1, 0])
    feats = path_features(z, labels, freq, s=s, gate_mean=gm)
    assert feats.shape == (5, feature_count(list(widths), gate_logits=True)) == (5, feature_count(list(widths)) + 12)
    assert torch.equal(
        feats[:, : feature_count(list(widths))], path_features(z, labels, freq)
    )  # the z columns unchanged
    want = torch.cat([sl - gl[labels] for sl, gl in zip(s, gm)], 1)
    assert torch.equal(feats[:, -12:], want)
    v = [sl.clone().requires_grad_(True) for sl in s]  # what the adaptive attack differentiates through
    path_features(z, labels, freq, s=v, gate_mean=gm)[:, -12:].sum().backward()
    assert all(bool((vl.grad == 1).all()) for vl in v)
    with pytest.raises(ValueError, match="need both the gate logits s and the profiles' gate_mean"):
        path_features(z, labels, freq, s=s)


def test_features_first_built_in_inference_mode_still_differentiate() -> None:
    """Detector.predict (inference mode) and then the adaptive attack (autograd) in one process: the per-width tensors
    cached by the first call must serve the second. Widths used by no other test, so this one makes the first call."""
    g = torch.Generator().manual_seed(2)
    freq = [torch.rand(2, c, generator=g) for c in (3, 7, 5)]
    with torch.inference_mode():
        path_features([torch.rand(4, c, generator=g) > 0.5 for c in (3, 7, 5)], torch.tensor([0, 1, 1, 0]), freq)
    v = [torch.rand(4, c, generator=g).requires_grad_(True) for c in (3, 7, 5)]
    path_features(v, torch.tensor([0, 1, 1, 0]), freq).sum().backward()
    assert all(vl.grad is not None for vl in v)


def test_path_likelihoods_exact_on_a_hand_built_case() -> None:
    # 2 layers, 2 classes. Layer 0: 2 filters, layer 1: 1 filter (frequency 0 is clamped to eps = 1e-3).
    freq = [torch.tensor([[0.9, 0.2], [0.1, 0.5]]), torch.tensor([[0.0], [0.6]])]
    z = [torch.tensor([[True, False]]), torch.tensor([[True]])]
    ll = PathLikelihood.from_freq(freq)(z)
    log = math.log
    want = torch.tensor([[[log(0.9) + log(0.8), log(0.1) + log(0.5)], [log(1e-3), log(0.6)]]])
    assert ll.shape == (1, 2, 2) and torch.allclose(ll, want, atol=1e-6)
    f = likelihood_features(ll, torch.tensor([0]))
    # own (per layer), margin over the other class (per layer), margin of the summed log-likelihoods
    own, margin = want[0, :, 0], want[0, :, 0] - want[0, :, 1]
    assert torch.allclose(f, torch.cat([own, margin, margin.sum().view(1)]).view(1, 5), atol=1e-6)
    feats = path_features(z, torch.tensor([0]), freq)
    assert feats.shape == (1, feature_count([2, 1])) == (1, 4 * 2 + 1 + 3)
    assert torch.allclose(feats[:, -5:], f)


def test_likelihood_features_are_differentiable_in_soft_paths() -> None:
    g = torch.Generator().manual_seed(0)
    freq = [torch.rand(3, c, generator=g) for c in (4, 8)]
    v = [torch.rand(5, c, generator=g).requires_grad_(True) for c in (4, 8)]
    path_features(v, torch.tensor([0, 1, 2, 0, 1]), freq)[:, -5:].sum().backward()
    assert all(vl.grad is not None and vl.grad.abs().sum() > 0 for vl in v)
