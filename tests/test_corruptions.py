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


def test_each_augmentation_kind_changes_what_it_names_and_unknown_kinds_are_refused() -> None:
    """Hue rotation keeps each pixel's brightest channel (HSV value); a saturation change keeps its grey level; the
    fit's kinds are named, not guessed."""
    from torchvision.transforms.v2.functional import rgb_to_grayscale

    from detector.corruptions import AUGMENT, CORRUPTIONS

    x = torch.rand(60, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.25  # no clamping at 0 or 1
    hue = random_corruptions(x, 0, ("hue",))
    assert torch.allclose(hue.amax(1), x.amax(1), atol=1e-5) and float((hue - x).abs().mean()) > 1e-3
    sat = random_corruptions(x, 0, ("saturation",))
    assert float((rgb_to_grayscale(sat) - rgb_to_grayscale(x)).abs().mean()) < 5e-3  # but where it clamps
    assert float((sat - x).abs().mean()) > 1e-2
    with pytest.raises(ValueError, match="expected some of"):
        random_corruptions(x, 0, ("noise", "rain"))
    assert all(v.kind in AUGMENT or v.kind == "" for v in CORRUPTIONS.values())


def test_a_yes_no_augmentation_record_reads_as_the_five_base_kinds() -> None:
    from detector.calibration import CalibrationConfig
    from detector.corruptions import BASE_AUGMENT

    assert CalibrationConfig.from_record({"config": {"clean_augment": True}}).clean_augment == BASE_AUGMENT
    assert CalibrationConfig.from_record({"config": {"clean_augment": False}}).clean_augment == ()
    assert CalibrationConfig.from_record({"config": {}}).clean_augment == BASE_AUGMENT
    with pytest.raises(ValueError, match="unknown kind"):
        CalibrationConfig(clean_augment=("fog",)).check()


def test_greyscale_is_pillows_black_and_white_and_equalisation_spreads_each_channel() -> None:
    import numpy as np
    from PIL import Image

    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.5 + 0.2  # mid-range, low contrast
    g = corrupt("greyscale", x)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    pil = torch.stack([torch.from_numpy(np.asarray(Image.fromarray(a).convert("L")).copy()) for a in u8]).float() / 255
    assert float((g[:, 0] - pil).abs().max()) <= 1.5 / 255
    e = corrupt("equalize", x)
    assert float(e.amax((2, 3)).min()) == 1.0 and float(e.amin((2, 3)).max()) < 0.05  # each channel spans 0..1
