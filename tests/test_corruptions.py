"""Corruptions of clean images (detector/corruptions.py): images stay images, each kind changes them, and the
calibration's random augmentation is seeded."""

import pytest
import torch

from detector.corruptions import CORRUPTIONS, corrupt, random_corruptions


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_each_corruption_keeps_the_unit_box_and_changes_the_image(name: str) -> None:
    x = torch.rand(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = corrupt(name, x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1  # blur of a [0, 1] image once rounded above 1
    assert float((y - x).abs().mean()) > 0.01


def test_random_corruptions_are_seeded_and_mix_every_kind() -> None:
    x = torch.rand(200, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b, c = random_corruptions(x, 0), random_corruptions(x, 0), random_corruptions(x, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    changed = (a - x).flatten(1).abs().mean(1)
    assert bool((changed > 0).all())
