"""The open-filters-only inference path (detector/sparse.py) gives the masked network's logits and paths."""

import pytest
import torch

from detector.sparse import SparseNet

from .conftest import tiny_decoupled_model


@pytest.mark.parametrize("batch", [1, 3, 16])
def test_sparse_forward_equals_the_masked_network(batch: int) -> None:
    m = tiny_decoupled_model()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding them is exercised
        for u in m.units():
            u.bn.running_mean.uniform_(-0.2, 0.2)
            u.bn.running_var.uniform_(0.5, 2.0)
            u.bn.weight.uniform_(0.5, 1.5)
    sp = SparseNet(m)
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = m.forward_paths(x)
        parts = [sp(x[i : i + batch]) for i in range(0, 16, batch)]
    logits = torch.cat([p[0] for p in parts])
    feats = torch.cat([p[1] for p in parts])
    z = [torch.cat([p[2][l] for p in parts]) for l in range(len(parts[0][2]))]
    s = [torch.cat([p[3][l] for p in parts]) for l in range(len(parts[0][3]))]
    assert torch.allclose(logits, ref.logits, atol=1e-4) and torch.allclose(feats, ref.features, atol=1e-4)
    for a, b, sa, sb in zip(z, ref.z, s, ref.s):  # a path may differ only where its gate logit is 0 within rounding
        assert bool(((a == b) | (sa.abs() < 1e-4)).all()) and torch.allclose(sa, sb, atol=1e-4)
    closed = sum(int((zl == 0).sum()) for zl in z)
    assert closed > 0  # the tiny model does close filters, so skipping them is exercised


def test_dense_model_is_refused() -> None:
    from detector import ModelConfig, build_model

    with pytest.raises(ValueError, match="decoupled"):
        SparseNet(build_model(ModelConfig()).eval())
