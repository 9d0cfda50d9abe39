import math

import torch
import torch.nn.functional as F

from detector.config import ModelConfig
from detector.gates import semhash, soft_gate
from detector.losses import DecouplingLoss, path_kl
from detector.networks import build_model


def _decoupled(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(decoupled=True))


def test_resnet20_size_and_logits_only() -> None:
    m = build_model(ModelConfig()).eval()
    assert sum(p.numel() for p in m.parameters()) == 269_722  # He et al.'s ResNet-20 (option A): 0.27 M
    out = m(torch.rand(4, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (4, 10)


def test_paths_have_one_entry_per_gated_conv() -> None:
    m = _decoupled().eval()
    x = torch.rand(5, 3, 32, 32)
    out = m.forward_paths(x, energy=True)
    assert out.logits.shape == (5, 10) and out.features.shape == (5, 64)
    assert [z.shape[1] for z in out.z] == [16] * 6 + [32] * 6 + [64] * 6
    assert all(z.shape[0] == 5 for z in out.z) and len(out.s) == len(out.energy) == 18
    assert [e.shape for e in out.energy] == [z.shape for z in out.z] and all((e >= 0).all() for e in out.energy)
    lean = m.forward_paths(x)  # inference callers skip the energy; nothing else changes
    assert lean.energy is None and torch.equal(lean.logits, out.logits)
    assert all(torch.equal(a, b) for a, b in zip(lean.z, out.z))


def test_eval_paths_are_binary_and_deterministic() -> None:
    m = _decoupled().eval()
    x = torch.rand(8, 3, 32, 32)
    a, b = m.forward_paths(x), m.forward_paths(x)
    for za, zb in zip(a.z, b.z):
        assert torch.equal(za, zb)
        assert set(za.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.logits, b.logits)


def test_eval_z_is_sign_of_gate_logit_and_masks_outputs() -> None:
    m = _decoupled().eval()
    with torch.no_grad():
        for u in m.units():  # push some gates shut so masking matters
            u.gate.fc2.bias.sub_(torch.linspace(0, 4, u.cout))
    out = m.forward_paths(torch.rand(3, 3, 32, 32))
    for s, z in zip(out.s, out.z):
        assert torch.equal(z, (s > 0).float())
    assert 0 < sum(float(z.mean()) for z in out.z) / 18 < 1


def test_batched_equals_unbatched() -> None:
    m = _decoupled().eval()
    x = torch.rand(6, 3, 32, 32)
    full = m.forward_paths(x)
    for i in range(6):
        one = m.forward_paths(x[i : i + 1])
        torch.testing.assert_close(one.logits, full.logits[i : i + 1], rtol=1e-4, atol=1e-5)
        assert all(torch.equal(a[i : i + 1], b) for a, b in zip(full.z, one.z))


def test_semhash_train_values_and_straight_through_gradient() -> None:
    torch.manual_seed(0)
    s = torch.randn(1000, 16, requires_grad=True)
    z = semhash(s, noise_std=0.0, training=True)
    assert z.min() >= 0 and z.max() <= 1
    hard = z == (s > 0).float()
    assert 0.3 < hard.float().mean() < 0.8  # roughly half hard (plus soft values that happen to be 0/1)
    z.sum().backward()
    s2 = s.detach().clone().requires_grad_(True)
    soft_gate(s2).sum().backward()
    torch.testing.assert_close(s.grad, s2.grad)  # gradient is always that of v1


def test_every_gate_parameter_gets_a_gradient_in_training() -> None:
    m = _decoupled().train()
    loss_mod = DecouplingLoss([u.cout for u in m.units()], 10)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    out = m.forward_paths(x, energy=True)
    terms = loss_mod(out, y)
    (F.cross_entropy(out.logits, y) + terms["mi"] + terms["kl"] + terms["l1"]).backward()
    for name, p in m.named_parameters():
        if ".gate." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    for v in terms.values():
        assert torch.isfinite(v)


def test_grouped_losses_equal_the_per_layer_definition() -> None:
    """DecouplingLoss batches layers of equal width; the terms must equal the layer-by-layer formulas, gradients too."""
    torch.manual_seed(0)
    m = _decoupled().train()
    loss_mod = DecouplingLoss([u.cout for u in m.units()], 10)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = m.forward_paths(x, energy=True)
    got = loss_mod(out, y)
    n = len(out.z)
    ref = {
        "mi": sum(F.cross_entropy(h(z), y) for h, z in zip(loss_mod.heads, out.z)) / n,
        "kl": sum(path_kl(z, e) for z, e in zip(out.z, out.energy)) / n,
        "l1": sum(z.mean() for z in out.z) / n,
    }
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)
    g_got = torch.autograd.grad(sum(got.values()), list(loss_mod.parameters()) + out.z, retain_graph=True)
    g_ref = torch.autograd.grad(sum(ref.values()), list(loss_mod.parameters()) + out.z)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_losses_finite_when_a_layer_is_all_shut() -> None:
    z = torch.zeros(4, 8, requires_grad=True)
    e = torch.rand(4, 8, requires_grad=True)
    v = path_kl(z, e)
    v.backward()
    assert v.item() == 0.0 and torch.isfinite(z.grad).all() and torch.isfinite(e.grad).all()


def test_path_kl_exact_on_hand_built_case() -> None:
    z = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    assert math.isclose(path_kl(z, torch.ones(1, 4)).item(), math.log(2), rel_tol=1e-3)
    assert path_kl(z, torch.tensor([[3.0, 3.0, 0.0, 0.0]])).item() < 1e-3  # energy follows z: ~0


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = ModelConfig(decoupled=True, gate_bias_init=0.5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    import pytest

    with pytest.raises(ValueError, match="unknown ModelConfig keys.*bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_hard_training_phase_uses_eval_paths_with_soft_gradient() -> None:
    m = _decoupled().train()
    m.set_gate_training(noise_std=0.0, p_hard=1.0)
    out = m.forward_paths(torch.rand(4, 3, 32, 32))
    for s, z in zip(out.s, out.z):
        assert torch.equal(z.detach(), (s > 0).float())
    sum(z.sum() for z in out.z).backward()
    assert all(u.gate.fc2.bias.grad is not None and u.gate.fc2.bias.grad.abs().sum() > 0 for u in m.units())


def test_reused_pooled_input_equals_pooling_the_real_input() -> None:
    m = _decoupled().eval()
    with torch.no_grad():
        for u in m.units():  # shut some filters so the masked pooling is exercised
            u.gate.fc2.bias.sub_(torch.linspace(0, 3, u.cout))
    seen = []
    hooks = [b.unit2.register_forward_hook(lambda mod, args, out: seen.append((mod, args[0]))) for b in m.blocks]
    out = m.forward_paths(torch.rand(4, 3, 32, 32))
    for h in hooks:
        h.remove()
    for k, (unit, x) in enumerate(seen):
        torch.testing.assert_close(unit.gate(x.mean(dim=(2, 3))), out.s[2 * k + 1], rtol=1e-5, atol=1e-5)


def test_spatial_mean_matches_mean_and_keeps_the_gradient_layout() -> None:
    import detector.networks.resnet_cifar as dm

    torch.manual_seed(0)
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(4, 6, 8, 8).contiguous(memory_format=fmt).requires_grad_()
        w = torch.randn(4, 6)
        ours, ref = dm.spatial_mean(x), x.mean(dim=(2, 3))
        assert torch.equal(ours, ref) and ours.grad_fn is not ref.grad_fn
        (g_ours,) = torch.autograd.grad((ours * w).sum(), x)
        (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
        assert torch.equal(g_ours, g_ref)
        assert g_ours.stride()[2:] == (0, 0)  # a broadcast view, not a new (N, C, H, W) tensor in another layout
    with torch.no_grad():  # no autograd: the plain op
        assert dm.spatial_mean(x).grad_fn is None


def test_spatial_mean_in_bf16_equals_mean_on_the_networks_sizes() -> None:
    # bf16 pools by sum / (H * W) (Tensor.mean copies to float32 first); on the power-of-two maps the network
    # pools (32², 16², 8²) the values are exactly mean's, with and without autograd, and so is the gradient.
    import detector.networks.resnet_cifar as dm

    torch.manual_seed(0)
    for hw in (32, 16, 8):
        x = (3 * torch.randn(16, 8, hw, hw)).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
        ref = x.mean(dim=(2, 3))
        for ours in (dm.spatial_mean(x), dm.spatial_mean(x.detach())):
            assert ours.dtype == torch.bfloat16 and torch.equal(ours, ref)
        w = torch.randn(16, 8).bfloat16()
        (g_ours,) = torch.autograd.grad((dm.spatial_mean(x) * w).sum(), x)
        (g_ref,) = torch.autograd.grad((ref * w).sum(), x)
        assert torch.equal(g_ours, g_ref)
        assert g_ours.is_contiguous(memory_format=torch.channels_last)  # written out in x's layout, not a view


def test_option_a_shortcut_matches_pad_of_subsample_in_value_gradient_and_layout() -> None:
    import detector.networks.resnet_cifar as dm

    torch.manual_seed(0)
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(3, 4, 8, 8).contiguous(memory_format=fmt).requires_grad_()
        g = torch.randn(3, 8, 4, 4)
        ref = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 1, 3))  # uneven channel padding, to catch a swapped lo / hi
        ours = dm.option_a_shortcut(x, 2, 1, 3)
        assert torch.equal(ours, ref)
        (g_ours,) = torch.autograd.grad((ours * g).sum(), x)
        (g_ref,) = torch.autograd.grad((ref * g).sum(), x)
        assert torch.equal(g_ours, g_ref) and g_ours.is_contiguous(memory_format=fmt)


def test_training_gradients_equal_those_through_plain_mean(monkeypatch) -> None:
    # The layout-friendly mean changes how gradients are stored, not their values: a decoupled training step's
    # gradients equal those with autograd's own mean backward.
    import detector.networks.resnet_cifar as dm

    grads = []
    for plain in (False, True):
        if plain:
            monkeypatch.setattr(dm, "spatial_mean", lambda t: t.mean(dim=(2, 3)))
        m = _decoupled().train().to(memory_format=torch.channels_last)
        loss_mod = DecouplingLoss([u.cout for u in m.units()], 10)
        torch.manual_seed(1)
        x = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (8,))
        out = m.forward_paths(x, energy=True)
        terms = loss_mod(out, y)
        (F.cross_entropy(out.logits, y) + terms["mi"] + terms["kl"] + terms["l1"]).backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
