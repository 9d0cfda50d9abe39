import torch

from detector.config import ModelConfig
from detector.networks import build_model
from detector.stats import collect_paths, compute_stats, dense_macs, filter_states, macs_per_sample, pruned_parameters


def _z(model, n: int, fill: float = 1.0) -> list[torch.Tensor]:
    return [torch.full((n, u.cout), fill) for u in model.units()]


def test_dense_macs_of_resnet20() -> None:
    m = build_model(ModelConfig())
    # stem 3*16*9*1024 + 6 convs 16*16*9*1024 + (16*32 + 5*32*32)*9*256 + (32*64 + 5*64*64)*9*64 + FC 640
    assert dense_macs(m) == 442_368 + 6 * 2_359_296 + 1_179_648 + 5 * 2_359_296 + 1_179_648 + 5 * 2_359_296 + 640


def test_all_open_equals_dense_and_hand_built_case() -> None:
    m = build_model(ModelConfig(decoupled=True))
    assert torch.all(macs_per_sample(m, _z(m, 3)) == dense_macs(m))
    z = _z(m, 1)
    z[0][0, :8] = 0  # block 1, conv 1: 8 of 16 filters open
    z[1][0, :4] = 0  # block 1, conv 2: 12 of 16 open, reading 8 inputs
    saved = (16 * 16 - 16 * 8) * 9 * 1024 + (16 * 16 - 8 * 12) * 9 * 1024
    assert macs_per_sample(m, z).item() == dense_macs(m) - saved


def test_filter_states_on_hand_built_paths() -> None:
    z = [torch.tensor([[1, 0, 1], [1, 0, 0]], dtype=torch.bool), torch.tensor([[1, 1], [1, 1]], dtype=torch.bool)]
    assert filter_states(z) == {"activated": 3, "silent": 1, "dynamic": 1, "total": 5}


def test_pruned_parameters() -> None:
    m = build_model(ModelConfig(decoupled=True))
    total = sum(p.numel() for p in m.parameters())
    z = [zl.bool() for zl in _z(m, 2)]
    assert pruned_parameters(m, z) == total
    z[0][:, 0] = False  # one silent filter in block 1's first conv (16 inputs; gate fc2 has 4 hidden units)
    # own kernel + BN + gate fc2 row; next conv's 16 kernels + its gate's LayerNorm (2) and fc1 column (4)
    assert pruned_parameters(m, z) == total - (16 * 9 + 2 + 4 + 1 + 16 * 9 + 2 + 4)


def test_dense_bundle_stats_are_all_activated() -> None:
    m = build_model(ModelConfig()).eval()
    x, y = torch.rand(20, 3, 32, 32), torch.randint(0, 10, (20,))
    s = compute_stats(m, x, y)
    assert s["flops_ratio"] == 1.0 and s["mean_macs"] == s["dense_macs"]
    assert s["filter_states"] == {"activated": 672, "silent": 0, "dynamic": 0, "total": 672}


def test_decoupled_stats_consistent() -> None:
    torch.manual_seed(0)
    m = build_model(ModelConfig(decoupled=True)).eval()
    with torch.no_grad():
        for u in m.units():
            u.gate.fc2.bias.copy_(torch.linspace(-1.5, 1.5, u.cout))
    x, y = torch.rand(30, 3, 32, 32), torch.randint(0, 10, (30,))
    s = compute_stats(m, x, y)
    fs = s["filter_states"]
    assert fs["activated"] + fs["silent"] + fs["dynamic"] == fs["total"] == 672
    assert 0 < s["flops_ratio"] < 1 and s["parameters_without_silent"] <= s["parameters"]
    assert len(s["per_layer"]) == 18 and sum(l["dynamic"] for l in s["per_layer"]) == fs["dynamic"]


def test_collect_paths_of_no_images() -> None:
    """An attack with no successful image leaves an empty set; its paths are empty, not an error."""
    m = build_model(ModelConfig(decoupled=True))
    logits, z = collect_paths(m, torch.zeros(0, 3, 32, 32))
    assert logits.shape == (0, 10) and len(z) == 18 and z[0].shape == (0, 16) and z[-1].shape == (0, 64)
