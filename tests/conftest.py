from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.config import CIFAR10_CLASSES

# fixtures of the trained tiny bundle, registered at the root of the tests package
from .pipeline import THREADS, XDIST_WORKER, tiny_bundle, tiny_data, trained_dense  # noqa: F401

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The real JPEG CIFAR-10 unpacked (`make data`), or DND_TEST_DATA=ROOT: tests that need it skip without it.
REAL_DATA = Path(os.environ.get("DND_TEST_DATA", Path(__file__).resolve().parents[1] / ".data"))


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker's torch runs on THREADS (tests/pipeline.py says why)."""
    if XDIST_WORKER:
        import torch

        torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test decodes into its own cache directory, never the user's ~/.cache."""
    monkeypatch.setenv("DND_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _images(n_per_class: int, seed: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent colour blobs plus noise for k classes: learnable, tiny, deterministic. x (N, 32, 32, 3) uint8."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(k):
        base = np.zeros((32, 32, 3), np.float32)
        base[..., c % 3] = 60 + 18 * c
        base[(c * 3) % 32 : (c * 3) % 32 + 8, :, (c + 1) % 3] = 200
        for _ in range(n_per_class):
            xs.append(np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8))
            ys.append(c)
    return np.stack(xs), np.array(ys)


def write_image_folder(
    root: Path,
    n_train: int = 30,
    n_test: int = 10,
    fmt: str = "png",
    classes: tuple[str, ...] = CIFAR10_CLASSES,
    size: int = 32,
) -> Path:
    """train/<class>/ and test/<class>/ of generated size x size images (drawn at 32 x 32, resized)."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
        x, y = _images(n, seed, len(classes))
        for k, (img, c) in enumerate(zip(x, y)):
            d = root / split / classes[c]
            d.mkdir(parents=True, exist_ok=True)
            im = Image.fromarray(img)
            (im if size == 32 else im.resize((size, size), Image.Resampling.BILINEAR)).save(d / f"{k:04d}.{fmt}")
    return root


def write_torchvision_root(root: Path, n_train: int = 30, n_test: int = 10) -> Path:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    x, y = _images(n_train, 0)
    chunks = np.array_split(np.arange(len(y)), 5)
    for i, idx in enumerate(chunks, 1):
        batch = {"data": x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1), "labels": y[idx].tolist()}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    x, y = _images(n_test, 1)
    (d / "test_batch").write_bytes(
        pickle.dumps({"data": x.transpose(0, 3, 1, 2).reshape(len(y), -1), "labels": y.tolist()})
    )
    (d / "batches.meta").write_bytes(pickle.dumps({"label_names": list(CIFAR10_CLASSES)}))
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "folder")


@pytest.fixture
def torchvision_root(tmp_path: Path) -> Path:
    return write_torchvision_root(tmp_path / "tv")


# The unit tests' network: a CIFAR ResNet-8 of widths 8 / 16 / 32 (6 gated layers, 112 filters), the same code
# paths as ResNet-20 at a fraction of the cost; full-size networks appear only where the shipped bundles are tested.
TINY_MODEL = {"blocks_per_stage": 1, "widths": (8, 16, 32)}
TINY_LAYERS, TINY_FILTERS = 6, 2 * (8 + 16 + 32)  # gated convs (two per block) and their filters
# ResNet-20, where an untrained ResNet-8 will not do: it labels every random image with one class
RESNET20 = {"blocks_per_stage": 3, "widths": (16, 32, 64)}


def tiny_decoupled_model(seed: int = 0, **arch):
    """An untrained decoupled ResNet-8 (or `arch`) in eval mode whose gates open some filters and not others."""
    import torch

    from detector import ModelConfig, build_model

    torch.manual_seed(seed)
    m = build_model(ModelConfig(decoupled=True, **(arch or TINY_MODEL)))
    with torch.no_grad():
        for u in m.units():
            u.gate.fc2.bias.copy_(torch.linspace(-1, 1, u.cout))
    return m.eval()


def write_detector_bundle(out: Path, seed: int = 0, features: dict | None = None, **arch) -> Path:
    """A decoupled bundle (ResNet-8, or `arch`) with synthetic profiles, scorer and threshold: no training.
    `features`: the FeatureSpec (as a dict) the scorer reads beside the path features."""
    import torch

    from detector import save_bundle
    from detector.consistency import FeatureSpec
    from detector.features import feature_count
    from detector.profiles import PathProfiles, save_profiles
    from detector.scorer import PathScorer

    m = tiny_decoupled_model(seed, **arch)
    save_bundle(m, out, {})
    g = torch.Generator().manual_seed(seed)
    freq = [torch.rand(10, u.cout, generator=g) for u in m.units()]
    gate_mean = [torch.randn(10, u.cout, generator=g) for u in m.units()]
    n_feat = feature_count([f.shape[1] for f in freq], gate_logits=True)
    n_feat += FeatureSpec.from_dict(features).extra_columns(len(freq))
    scorer = PathScorer(torch.zeros(n_feat), torch.ones(n_feat), torch.randn(n_feat, generator=g), 0.0)
    meta = {"threshold": 0.0, "target_fpr": 0.05, "calibration": {"synthetic": True}}
    if features is not None:
        meta["features"] = features
    save_profiles(PathProfiles(freq, torch.full((10,), 5), meta, scorer, gate_mean), out, "synthetic")
    return out


@pytest.fixture(scope="module")
def model_and_data():
    """An untrained decoupled ResNet-20 and 24 random images labelled with its predictions, 4 of them relabelled
    so that they are misclassified (attacks skip those)."""
    import torch

    from detector import ModelConfig, build_model

    torch.manual_seed(0)
    m = build_model(ModelConfig(decoupled=True)).eval()
    x = torch.rand(24, 3, 32, 32)
    with torch.no_grad():
        y = m(x).argmax(1)
    y[:4] = (y[:4] + 1) % 10
    return m, x, y
