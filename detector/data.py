"""Image data from any supported layout, decoded once and cached as uint8 arrays.

Layouts accepted for `--data ROOT`:
  (a) torchvision CIFAR-10: ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch}  (or ROOT is that folder)
  (b) torchvision CIFAR-100: ROOT/cifar-100-python/{train,test,meta}  (or ROOT is that folder); the 100 fine labels
  (c) image folder: ROOT/train/<class>/*.{jpg,png}, ROOT/test/<class>/*, any classes  (what ../shared/data unpacks to)
Images come back square, (N, 3, S, S): at `size` when one is asked for (a bundle's input size; others are resized
as the service resizes what it is sent: area averaging when shrinking, bicubic when growing,
`images.resample_filter`), else at the data's own size (CIFAR: 32).
"""

from __future__ import annotations

import hashlib
import os
import pickle  # only to read CIFAR's own python batches (a data format); models are never pickled
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .config import CIFAR10_CLASSES
from .images import resize_square

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
LAYOUT_HELP = (
    "expected (a) a torchvision CIFAR-10 root holding cifar-10-batches-py/ with data_batch_1..5 and test_batch, "
    "(b) a torchvision CIFAR-100 root holding cifar-100-python/ with train, test and meta, or (c) an image-folder "
    "root holding train/<class>/*.jpg and test/<class>/*.jpg"
)


class DataLayoutError(ValueError):
    """--data points at something that is neither supported layout (or is incomplete)."""


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # (N, 3, S, S) uint8
    y: torch.Tensor  # (N,) int64
    classes: tuple[str, ...]
    fingerprint: str  # sha256 of the decoded pixels and labels, independent of layout or file order on disk

    def __len__(self) -> int:
        return len(self.y)


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """Images as float32 in [0, 1]: uint8 pixels are scaled, float input is taken as already in [0, 1]."""
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()


def _fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y.astype(np.int64)).tobytes())
    return h.hexdigest()[:16]


def _torchvision_dir(root: Path) -> Path | None:
    for d in (root / "cifar-10-batches-py", root):
        if (d / "batches.meta").exists() or (d / "test_batch").exists() or (d / "data_batch_1").exists():
            return d
    return None


def _cifar100_dir(root: Path) -> Path | None:
    for d in (root / "cifar-100-python", root):
        if (d / "meta").is_file() and ((d / "train").is_file() or (d / "test").is_file()):
            return d
    return None


def _load_cifar100(d: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """torchvision's CIFAR-100 pickles: `data` (N, 3072) uint8 rows, `fine_labels`, and the names in `meta`."""
    if not (d / split).is_file():
        raise DataLayoutError(f"{d} looks like a torchvision CIFAR-100 folder but lacks {split!r}; {LAYOUT_HELP}")
    with open(d / split, "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    with open(d / "meta", "rb") as f:
        classes = tuple(pickle.load(f, encoding="latin1")["fine_label_names"])
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(batch["fine_labels"], dtype=np.int64), classes


def _load_torchvision(d: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    missing = [n for n in names if not (d / n).is_file()]
    if missing:
        raise DataLayoutError(f"{d} looks like a torchvision CIFAR-10 folder but lacks {missing}; {LAYOUT_HELP}")
    xs, ys = [], []
    for n in names:
        with open(d / n, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch["labels"], dtype=np.int64))
    classes = CIFAR10_CLASSES
    if (d / "batches.meta").is_file():
        with open(d / "batches.meta", "rb") as f:
            classes = tuple(pickle.load(f, encoding="latin1")["label_names"])
    return np.concatenate(xs), np.concatenate(ys), classes


def _cache_dir() -> Path:
    return Path(os.environ.get("DND_CACHE_DIR", Path.home() / ".cache" / "dnd"))


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 images (N, 3, H, W) -> (N, 3, size, size), each resized by Pillow as the service resizes what it is sent
    (`images.resize_square`)."""
    if x.shape[2:] == (size, size):
        return x
    out = np.empty((len(x), 3, size, size), dtype=np.uint8)
    for i, a in enumerate(x):
        out[i] = np.asarray(resize_square(Image.fromarray(a.transpose(1, 2, 0)), size)).transpose(2, 0, 1)
    return out


def _load_folder(d: Path, size: int | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    classes = tuple(sorted(p.name for p in d.iterdir() if p.is_dir()))
    files = [(c, p) for c in classes for p in sorted((d / c).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DataLayoutError(f"{d} holds no images in class folders; {LAYOUT_HELP}")
    # The cache key covers names, sizes and mtimes, so an edited folder is decoded again.
    key = hashlib.sha256()
    for c, p in files:
        st = p.stat()
        key.update(f"{c}/{p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    if size is not None:  # (the key of a folder read at its own size stays what it was)
        key.update(f"size={size} resize=box-or-bicubic".encode())
    cache = _cache_dir() / f"folder-{key.hexdigest()[:20]}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return z["x"], z["y"], tuple(str(c) for c in z["classes"])
    if size is None:  # the data's own size: every image must have it
        with Image.open(files[0][1]) as im:
            w, h = im.size
        if w != h:
            raise DataLayoutError(f"{files[0][1]} is {w}x{h}: for images that are not square, pass a size (--size)")
        size, strict = w, True
    else:
        strict = False
    x = np.empty((len(files), 3, size, size), dtype=np.uint8)
    y = np.empty(len(files), dtype=np.int64)
    index = {c: i for i, c in enumerate(classes)}
    for k, (c, p) in enumerate(tqdm(files, desc=f"decoding {d.name}", unit="img", leave=False)):
        with Image.open(p) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                if strict:
                    raise DataLayoutError(
                        f"{p}: expected a {size}x{size} image like {files[0][1].name}, found {im.size[0]}x"
                        f"{im.size[1]}; pass a size (--size) to resize every image to it"
                    )
                im = resize_square(im, size)
            a = np.asarray(im)
        x[k] = a.transpose(2, 0, 1)
        y[k] = index[c]
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, x=x, y=y, classes=np.array(classes))
    os.replace(tmp, cache)
    return x, y, classes


def check_classes(split: Split, classes: tuple[str, ...] | list[str], what: str) -> None:
    """Refuse data whose classes (folder names, or torchvision's label names, in label order) are not `classes`: a
    bundle's labels would silently name the wrong things."""
    if tuple(split.classes) != tuple(classes):
        raise ValueError(
            f"{what}: expected the classes {list(classes)} in this order, found {list(split.classes)} in the data"
        )


def load_split(root: str | os.PathLike, split: str, size: int | None = None) -> Split:
    """Load the 'train' or 'test' split from ROOT (any layout of the module docstring), as size x size images when
    `size` is given (a bundle's cfg.input_size), else at the data's own size."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataLayoutError(f"data root {root} does not exist or is not a directory; {LAYOUT_HELP}")
    tv, c100 = _torchvision_dir(root), _cifar100_dir(root)
    if c100 is not None:
        x, y, classes = _load_cifar100(c100, split)
    elif tv is not None:
        x, y, classes = _load_torchvision(tv, split)
    elif (root / split).is_dir():
        x, y, classes = _load_folder(root / split, size)
    else:
        found = sorted(p.name for p in root.iterdir())[:10]
        raise DataLayoutError(
            f"data root {root} has no '{split}/' folder and no cifar-10-batches-py/ (found {found}); {LAYOUT_HELP}"
        )
    if size is not None:
        x = _resize(x, size)
    return Split(torch.from_numpy(x), torch.from_numpy(y), classes, _fingerprint(x, y))
