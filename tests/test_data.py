from pathlib import Path

import pytest
import torch

from detector.data import DataLayoutError, load_split

from .conftest import write_image_folder
from .pipeline import THREADS


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


def test_a_folder_of_mixed_sizes_is_refused_at_its_own_size_and_resized_at_a_given_one(tmp_path: Path) -> None:
    root = write_image_folder(tmp_path, n_train=1, n_test=1)
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "test" / "cat" / "big.png")
    with pytest.raises(DataLayoutError, match="expected a 32x32 image like .*, found 40x30; pass a size"):
        load_split(root, "test")
    for size in (32, 48):
        split = load_split(root, "test", size)
        assert split.x.shape[1:] == (3, size, size) and split.x.dtype == torch.uint8
        big = split.x[[i for i, c in enumerate(split.y.tolist()) if split.classes[c] == "cat"][-1]]  # big.png: last
        assert big[0].float().mean() > 150 and big[1].float().mean() < 40  # the red image, resized, not cropped


@pytest.mark.parametrize("size", [16, 48])
def test_every_layout_resizes_as_the_service_does(image_folder: Path, torchvision_root: Path, size: int) -> None:
    """Training and profiling images read at another size are the images the service would make of the same files:
    both layouts give exactly what decode_image gives for each one (box filter shrinking, bicubic growing)."""
    import io

    from PIL import Image

    from detector.images import decode_image

    own = load_split(image_folder, "test")
    for root in (image_folder, torchvision_root):
        s = load_split(root, "test", size)
        for i in (0, 57):
            buf = io.BytesIO()
            Image.fromarray(own.x[i].permute(1, 2, 0).numpy()).save(buf, "PNG")
            served, resized = decode_image(buf.getvalue(), 10**8, size)
            assert resized == [32, 32] and torch.equal(s.x[i], (served * 255).round().to(torch.uint8))


def test_a_folder_at_another_square_size_loads_at_that_size(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "test"):
        for c in ("ant", "bee", "cow"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 20), (i * 90, 40, 40)).save(tmp_path / split / c / f"{i}.png")
    s = load_split(tmp_path, "train")
    assert s.x.shape == (6, 3, 20, 20) and s.classes == ("ant", "bee", "cow")


def write_cifar100_root(root: Path, n_train: int = 2, n_test: int = 1) -> Path:
    """torchvision's CIFAR-100 layout (cifar-100-python/{train,test,meta}) with n images per fine class, generated:
    no copy of the real data can be had here, so the format is what is tested."""
    import pickle

    import numpy as np

    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"class_{c:02d}" for c in range(100)]
    for split, n in (("train", n_train), ("test", n_test)):
        y = np.repeat(np.arange(100), n)
        x = rng.integers(0, 256, (len(y), 3072), dtype=np.uint8)
        (d / split).write_bytes(
            pickle.dumps({"data": x, "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()})
        )
    (d / "meta").write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": names[:20]}))
    return root


def test_torchvision_cifar100_root_loads_its_fine_classes_and_trains_a_100_class_network(tmp_path: Path) -> None:
    import json

    from detector.data import load_split
    from dnd.cli import main

    root = write_cifar100_root(tmp_path / "c100")
    train, test = load_split(root, "train"), load_split(root / "cifar-100-python", "test")
    assert len(train.classes) == 100 and train.classes[7] == "class_07" and train.x.shape == (200, 3, 32, 32)
    assert train.y.tolist()[:4] == [0, 0, 1, 1] and len(test) == 100 and test.classes == train.classes
    args = ["--epochs", "1", "--batch-size", "50", "--blocks-per-stage", "1", "--widths", "4,8,8"]
    args += ["--threads", str(THREADS)]
    assert main(["train", "--data", str(root), "--out", str(tmp_path / "m"), *args]) == 0
    model = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert model["num_classes"] == 100 and model["classes"][99] == "class_99"
