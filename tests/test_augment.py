"""Training augmentation (dnd/training/augment.py): crops, mirrors and Cutout per image."""

import torch


def test_augment_crops_and_mirrors_each_image_at_its_offsets() -> None:
    from dnd.training.augment import augment, crop_flip_params

    x = torch.rand(16, 3, 32, 32)
    ij, flip = crop_flip_params(16, torch.Generator().manual_seed(0))
    out = augment(x, ij, flip)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    assert flip.any() and (~flip).any() and out.shape == x.shape
    for k in range(16):  # the per-image definition: crop, then mirror
        i, j = ij[k].tolist()
        crop = padded[k, :, i : i + 32, j : j + 32]
        assert torch.equal(out[k], crop.flip(2) if flip[k] else crop)
    assert torch.equal(augment(x[3:4], ij[3:4], flip[3:4])[0], out[3])  # batched == unbatched


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    from dnd.training.augment import cutout, cutout_params

    x = torch.rand(64, 3, 32, 32) + 0.1  # no zeros of its own
    centre = cutout_params(64, torch.Generator().manual_seed(0))
    centre[0], centre[1] = torch.tensor([16, 16]), torch.tensor([0, 31])  # one square inside, one in a corner
    out = cutout(x, centre, 16)
    for k in range(64):  # the per-image definition
        i, j = centre[k].tolist()
        r0, c0 = max(i - 8, 0), max(j - 8, 0)
        r1, c1 = min(i + 8, 32), min(j + 8, 32)
        ref = x[k].clone()
        ref[:, r0:r1, c0:c1] = 0
        assert torch.equal(out[k], ref)
    assert (out[0] == 0).sum() == 3 * 16 * 16 and (out[1] == 0).sum() == 3 * 8 * 9
    assert torch.equal(cutout(x[5:6], centre[5:6], 16)[0], out[5])  # batched == unbatched
    assert torch.equal(cutout(x, centre, 0), x)
