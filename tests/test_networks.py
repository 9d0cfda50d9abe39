"""detector/networks: the registry's presets are the paper's networks, decouple() gates a user's CNN as the paper does,
and every family answers the GatedNetwork interface the rest of the product reads."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detector import ModelConfig, arch_config, build_model, decouple
from detector.losses import DecouplingLoss
from detector.networks import GatedNetwork
from detector.networks.macs import dense_macs, macs_per_sample, pruned_parameters

from .user_cnn import SmallCNN


@pytest.mark.parametrize(
    "name, units, macs_m",
    # units: gated convs (ResNets: two per block; VGG: every conv but the first and the last). MACs: ResNet-56 is
    # 125.5 M, as its paper counts; the network-slimming VGG-19 at 32 x 32 is 398 M.
    [("resnet20", 18, 40.55), ("resnet56", 54, 125.49), ("resnet110", 108, 252.89), ("vgg19", 14, 398.14)],
)
def test_presets_build_the_papers_networks(name: str, units: int, macs_m: float) -> None:
    m = build_model(arch_config(name))
    assert isinstance(m, GatedNetwork) and len(m.units()) == units
    assert dense_macs(m) / 1e6 == pytest.approx(macs_m, abs=0.01)
    assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_architectures_are_refused_naming_what_is_known() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'resnet21'.*resnet56.*vgg19"):
        arch_config("resnet21")
    with pytest.raises(ValueError, match="cannot import small_cnn from no_such_module"):
        arch_config("no_such_module:small_cnn")
    with pytest.raises(ValueError, match="not_here"):
        arch_config("tests.user_cnn:not_here")


def _decoupled_small(size: int = 20, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(arch="tests.user_cnn:small_cnn", num_classes=3, input_size=size, classes=("a", "b", "c"))
    return decouple(SmallCNN(3), cfg)


def test_decouple_gates_every_conv_but_the_first_and_the_last() -> None:
    m = _decoupled_small()
    assert [u.cout for u in m.units()] == [8, 16, 16]  # conv1, conv2, conv3; not the stem conv, not the head
    assert all(u.gate is not None for u in m.units()) and m.cfg.decoupled
    dense = SmallCNN(3).state_dict()
    new = set(m.state_dict()) - {f"net.{k}" for k in dense} - {"mean", "std"}
    assert new and all(".gate." in k for k in new)  # a dense checkpoint of the builder loads; only gates are new


def test_closed_filters_are_exactly_zero_after_the_batchnorm_or_the_conv_bias() -> None:
    m = _decoupled_small().eval()
    with torch.no_grad():
        for u in m.units():  # half of each unit's filters closed for every input
            u.gate.fc2.weight.zero_()
            u.gate.fc2.bias.copy_(torch.tensor([5.0, -5.0]).repeat(u.cout // 2))
    seen = []
    hooks = [u.register_forward_hook(lambda _m, _i, out: seen.append(out)) for u in m.units()]
    m.forward_paths(torch.rand(4, 3, 20, 20))
    for h in hooks:
        h.remove()
    for y, z, _, _ in seen:
        closed = z[0] == 0
        assert closed.sum() == len(closed) // 2
        assert torch.all(y[:, closed] == 0) and torch.any(y[:, ~closed] != 0)


def test_mac_accounting_follows_the_graph() -> None:
    """conv1 reads the stem (dense), conv2 a residual sum (dense), conv3 conv2's open filters, the last conv conv3's;
    the counts are the hand-written ones for every image's path."""
    m = _decoupled_small().eval()
    with torch.no_grad():
        out = m.forward_paths(torch.rand(6, 3, 20, 20))
    n0, n1, n2 = (z.double().sum(1) for z in out.z)
    hand = 3 * 8 * 9 * 400 + 8 * n0 * 9 * 400 + 8 * n1 * 9 * 100 + n1 * n2 * 9 * 100 + n2 * 16 * 100 + 16 * 3
    torch.testing.assert_close(macs_per_sample(m, out.z), hand, rtol=0, atol=0)
    ones = [torch.ones_like(z, dtype=torch.bool) for z in out.z]
    assert float(macs_per_sample(m, ones)[0]) == dense_macs(m)
    assert [c.source for c in m.costs()] == [None, None, None, 1, 2, None]
    # a filter of conv2 that is never open takes its kernels, bias + gate row, and conv3's input kernels and gate input
    silent = [z.bool() | True for z in out.z]
    silent[1][:, 0] = False
    gate = m.units()[1].gate
    removed = 8 * 9 + 2 + gate.fc2.in_features + 1 + 16 * 9 + 2 + m.units()[2].gate.fc1.out_features
    assert sum(p.numel() for p in m.parameters()) - pruned_parameters(m, silent) == removed


def test_a_decoupled_user_network_trains_with_the_decoupling_losses() -> None:
    m = _decoupled_small().train()
    loss_mod = DecouplingLoss([u.cout for u in m.units()], 3)
    x, y = torch.rand(8, 3, 20, 20), torch.randint(0, 3, (8,))
    out = m.forward_paths(x, energy=True)
    assert len(out.energy) == 3 and out.features.shape == (8, 16)
    d = loss_mod(out, y)
    (F.cross_entropy(out.logits, y) + d["mi"] + d["kl"] + d["l1"]).backward()
    assert all(u.gate.fc1.weight.grad.abs().sum() > 0 for u in m.units())


def test_straight_through_paths_give_attackers_a_gradient_through_the_gates() -> None:
    m = _decoupled_small().eval()
    x = torch.rand(2, 3, 20, 20, requires_grad=True)
    m(x).sum().backward()
    assert m.units()[0].gate.fc2.weight.grad is None  # binary gates: no gradient reaches them
    with m.straight_through_paths():
        m(x).sum().backward()
    assert m.units()[0].gate.fc2.weight.grad.abs().sum() > 0
    assert all(u.relax is None for u in m.units())  # restored on leaving


def test_a_module_fx_cannot_trace_is_refused_with_the_reason() -> None:
    class Branchy(SmallCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) if x.sum() > 0 else super().forward(-x)

    with pytest.raises(ValueError, match="cannot be traced symbolically"):
        decouple(Branchy(3))


def test_a_cnn_without_a_linear_classifier_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ValueError, match="final nn.Linear"):
        decouple(net)


@pytest.mark.parametrize("name", ["resnet20", "vgg11"])
def test_every_family_runs_at_another_input_size(name: str) -> None:
    cfg = replace(arch_config(name), input_size=48, decoupled=True, num_classes=3, classes=("a", "b", "c"))
    if name == "vgg11":
        cfg = replace(cfg, widths=(4, 8, 8, 16, 16))
    m = build_model(cfg).eval()
    out = m.forward_paths(torch.rand(2, 3, 48, 48))
    assert out.logits.shape == (2, 3) and len(out.z) == len(m.units())
    assert dense_macs(m) > dense_macs(build_model(replace(cfg, input_size=32)))  # costs follow the size


@pytest.mark.parametrize("family", ["vgg", "user"])
@pytest.mark.parametrize("everywhere", [True, False])
def test_the_open_filters_engine_gives_the_masked_networks_outputs(family: str, everywhere: bool) -> None:
    """Closed filters not computed, BatchNorm folded, compact channels through ReLU / pooling into the next conv's
    sliced weight, the full tensor back before a residual sum: the same logits and paths, at batch 1 and 5; with
    gathers on every map (everywhere) and with the default thresholds (which skip them on small maps)."""
    from detector.networks.open_filters import OpenFilterNet

    torch.manual_seed(0)
    if family == "vgg":
        m = build_model(replace(arch_config("vgg11"), decoupled=True, widths=(8, 16, 16, 32, 32)))
    else:
        m = _decoupled_small()
    with torch.no_grad():
        for u in m.units():  # some filters open, some closed
            u.gate.fc2.bias.uniform_(-2, 2)
        for bn in (x for x in m.modules() if isinstance(x, nn.BatchNorm2d)):  # BatchNorm that folding must honour
            bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2), bn.bias.uniform_(-0.3, 0.3)
    m.eval()
    engine, size = (OpenFilterNet(m, 0, 0) if everywhere else OpenFilterNet(m)), m.cfg.input_size
    units = [x for x in engine.modules() if type(x).__name__ == "OpenUnit"]
    assert len(units) == len(m.units()) and (all(u.gather for u in units) or not everywhere)
    assert any(type(x).__name__ == "SlicedConv" for x in engine.modules()) == everywhere
    for n in (1, 5):
        x = torch.rand(n, 3, size, size)
        with torch.no_grad():
            ref = m.forward_paths(x)
        logits, feats, z, _ = engine(x)
        torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(feats, ref.features, rtol=0, atol=1e-5)
        assert all(torch.equal(a, b) for a, b in zip(z, ref.z)) and 0 < sum(int(a.sum()) for a in z) < sum(
            a.numel() for a in z
        )


def test_the_open_filters_engine_shares_the_networks_gates() -> None:
    from detector.networks.open_filters import OpenFilterNet

    m = _decoupled_small().eval()
    engine = OpenFilterNet(m)
    gates = {id(u.gate) for u in m.units()}
    assert {id(x.gate) for x in engine.modules() if type(x).__name__ == "OpenUnit"} == gates
