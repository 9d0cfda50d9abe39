from pathlib import Path

import pytest
import torch

from detector.data import DataLayoutError, load_split

from .conftest import write_image_folder


def test_image_folder_loads_uint8_with_labels(image_folder: Path) -> None:
    s = load_split(image_folder, "train")
    assert s.x.shape == (300, 3, 32, 32) and s.x.dtype == torch.uint8
    assert s.y.tolist() == [c for c in range(10) for _ in range(30)]
    assert s.classes[0] == "airplane" and s.classes[9] == "truck"
    assert len(load_split(image_folder, "test")) == 100


def test_both_layouts_give_same_pixels_and_fingerprint(image_folder: Path, torchvision_root: Path) -> None:
    # PNG is lossless, so the folder copy and the torchvision copy of the same images must agree exactly.
    for split in ("train", "test"):
        a, b = load_split(image_folder, split), load_split(torchvision_root, split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
        assert a.fingerprint == b.fingerprint
    assert load_split(torchvision_root / "cifar-10-batches-py", "test").fingerprint == b.fingerprint


def test_folder_is_decoded_once_then_cached(image_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_split(image_folder, "test")
    import detector.data as data

    monkeypatch.setattr(data.Image, "open", lambda *a, **k: pytest.fail("decoded again despite the cache"))
    second = load_split(image_folder, "test")
    assert torch.equal(first.x, second.x)


def test_missing_root_names_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataLayoutError, match="does not exist.*torchvision.*image-folder"):
        load_split(tmp_path / "nope", "train")


def test_wrong_folder_names_both_layouts(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataLayoutError, match="no 'train/' folder.*cifar-10-batches-py"):
        load_split(tmp_path, "train")


def test_incomplete_torchvision_root(torchvision_root: Path) -> None:
    (torchvision_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataLayoutError, match="lacks.*data_batch_3"):
        load_split(torchvision_root, "train")


def test_non_cifar_sized_image_is_refused(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, n_train=1, n_test=1)
    from PIL import Image

    Image.new("RGB", (40, 30)).save(root / "test" / "cat" / "big.png")
    with pytest.raises(DataLayoutError, match="expected a 32x32 RGB image, found 40x30"):
        load_split(root, "test")
