"""The test-set splits (detector/splits.py): disjoint, class-balanced, deterministic."""

import torch

from detector.splits import balanced_subset, split_test


def test_split_is_disjoint_balanced_and_deterministic() -> None:
    y = torch.arange(10).repeat_interleave(7)[torch.randperm(70, generator=torch.Generator().manual_seed(1))]
    cal, ev = split_test(y, 10)
    assert len(set(cal.tolist()) & set(ev.tolist())) == 0 and len(cal) + len(ev) == 70
    assert torch.bincount(y[cal], minlength=10).tolist() == [3] * 10
    assert torch.equal(cal, split_test(y, 10)[0])
    sub = balanced_subset(ev, y, 20, 10)
    assert len(sub) == 20 and torch.bincount(y[sub], minlength=10).tolist() == [2] * 10
