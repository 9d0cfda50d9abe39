"""The committed bundles reproduce their metrics.json, and their evaluation reports, on the real JPEG CIFAR-10 test
set. Every shipped bundle and report must be there (a missing one fails); only the data may be absent, and then
each test skips saying so (`make data`, or DND_TEST_DATA=ROOT)."""

import json
from pathlib import Path

import pytest
import torch

from detector import load_model
from detector.data import load_split
from detector.stats import compute_stats

from .conftest import REAL_DATA
from .pipeline import THREADS

REPO = Path(__file__).resolve().parents[1]
DATA = REAL_DATA
BUNDLES = [
    REPO / "models" / n
    for n in ("resnet20-dense", "resnet20-decoupled", "resnet20-dense-robust", "resnet20-decoupled-robust")
]
# every bundle with a metrics.json to reproduce; the ResNet-20s above also have reference outputs (see below)
SHIPPED = [
    *BUNDLES,
    *(REPO / "models" / n for n in ("resnet56-dense", "resnet56-decoupled", "vgg19-dense", "vgg19-decoupled")),
]
# 10,000 forwards per bundle, 7-60 s each on 2 cores: slow (`make test-all`); the 1,000-image check below runs every
# bundle in `make test`
METRIC_BUNDLES = [pytest.param(b, marks=pytest.mark.slow) for b in SHIPPED]
# The VGG-19's threshold check scores the report's 1,000 images with three VGG-19 forwards each (the images and their
# two consistency copies), about three times the ResNet-56's multiply-adds: slow (`make test-all`), to keep `make test`
# short. The other detectors' checks run in `make test`.
VGG = pytest.mark.slow
# decoupled bundles with their detector, and the report `dnd evaluate` wrote for each
DETECTORS = [
    pytest.param("resnet20-decoupled", "evaluation", id="resnet20-decoupled"),
    pytest.param("resnet20-decoupled-robust", "evaluation-robust", id="resnet20-decoupled-robust"),
    pytest.param("resnet56-decoupled", "evaluation-resnet56", id="resnet56-decoupled"),
    pytest.param("vgg19-decoupled", "evaluation-vgg19", marks=VGG, id="vgg19-decoupled"),
]


@pytest.fixture(scope="module")
def test_split():
    if not (DATA / "test").is_dir() and not (DATA / "cifar-10-batches-py").is_dir():
        pytest.skip(f"CIFAR-10 not unpacked at {DATA} (run `make data` or set DND_TEST_DATA)")
    return load_split(DATA, "test")


@pytest.mark.parametrize("bundle", METRIC_BUNDLES, ids=lambda p: getattr(p, "name", None))
def test_metrics_regenerate(bundle: Path, test_split) -> None:
    assert (bundle / "metrics.json").is_file(), f"{bundle.name} ships without metrics.json: run `make stats`"
    torch.set_num_threads(THREADS)
    recorded = json.loads((bundle / "metrics.json").read_text())
    assert recorded["data_test_fingerprint"] == test_split.fingerprint, "metrics.json was computed on other data"
    now = compute_stats(load_model(bundle), test_split.x, test_split.y)
    assert now["n_images"] == 10_000
    assert now["test_accuracy"] == pytest.approx(recorded["test_accuracy"], abs=2e-4)  # float summation order only
    assert now["flops_ratio"] == pytest.approx(recorded["flops_ratio"], abs=1e-3)
    # one state per filter of every gated conv (for a dense bundle, of every conv its decoupling would gate)
    total = sum(row["filters"] for row in recorded["per_layer"])
    assert now["filter_states"]["total"] == recorded["filter_states"]["total"] == total > 0
    for k in ("activated", "silent", "dynamic"):
        assert abs(now["filter_states"][k] - recorded["filter_states"][k]) <= 2


@pytest.mark.parametrize("name, report_dir", DETECTORS)
def test_shipped_detector_threshold_transfers_to_unseen_clean_images(name: str, report_dir: str, test_split) -> None:
    """The calibrated threshold flags ~target FPR of clean, correctly classified images of the *evaluation* half
    (never seen by calibration), and the report's clean accuracy matches the model on that half."""
    from detector import load_detector
    from detector.data import to_unit_float
    from detector.splits import balanced_subset, split_test

    assert (REPO / "models" / name / "profiles.safetensors").is_file(), f"{name} ships without its detector"
    det = load_detector(REPO / "models" / name)
    # /v1/model says which trade-off the bundle makes
    assert (det.info()["training"]["adversarial"] is not None) == name.endswith("-robust")
    assert det.profiles.meta["data_fingerprint"].endswith(test_split.fingerprint)
    report = REPO / "reports" / report_dir / "report.json"
    assert report.is_file(), f"{name} ships without {report.relative_to(REPO)}: run `make evaluate`"
    r = json.loads(report.read_text())
    # the report is of these weights and this threshold, or its figures describe another detector
    assert r["weights_sha256"] == det.weights_sha256 and r["threshold"] == pytest.approx(det.threshold), (
        f"{report.relative_to(REPO)} was written for other weights or profiles than models/{name}: evaluate again"
    )
    _, ev = split_test(test_split.y, 10, det.profiles.meta["calibration"]["split_seed"])
    ev = balanced_subset(ev, test_split.y, r["config"]["limit"], 10)  # the report's evaluation images
    assert r["evaluation_images"] == len(ev)
    p = det.predict(to_unit_float(test_split.x[ev]))
    ok = p.labels == test_split.y[ev]
    fpr = float(p.is_adversarial[ok].float().mean())
    target = det.profiles.meta["target_fpr"]
    assert target - 0.025 <= fpr <= target + 0.025, f"clean FPR {fpr:.3f} on the evaluation half, target {target}"
    assert r["clean_accuracy"] == pytest.approx(float(ok.float().mean()), abs=2e-4)
    assert r["clean_fpr_at_threshold"] == pytest.approx(fpr, abs=2e-4)


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_shipped_bundles_load_through_the_registry_with_the_same_outputs(bundle: Path) -> None:
    """tests/data/shipped-outputs.safetensors holds each bundle's logits, paths and gate logits on 16 seeded random
    images, written by the code of commit 978935e, before the networks moved behind GatedNetwork and the registry.
    Loading today gives the same numbers: the same paths, logits and gate logits to float rounding (equal on the
    machine that wrote them)."""
    from safetensors.torch import load_file

    ref = load_file(str(REPO / "tests" / "data" / "shipped-outputs.safetensors"))
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(20261205))
    with torch.no_grad():
        out = load_model(bundle).forward_paths(x)
    torch.testing.assert_close(out.logits, ref[f"{bundle.name}.logits"], rtol=0, atol=1e-5)
    if f"{bundle.name}.z" not in ref:
        assert out.z == []
        return
    s = torch.cat(out.s, 1)
    torch.testing.assert_close(s, ref[f"{bundle.name}.s"], rtol=0, atol=1e-5)
    firm = ref[f"{bundle.name}.s"].abs() > 1e-4  # a gate logit at 0 may flip with the summation order
    assert torch.equal(torch.cat(out.z, 1).to(torch.uint8)[firm], ref[f"{bundle.name}.z"][firm])


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_bundle_classifies_a_thousand_test_images_as_its_metrics_say(bundle: Path, test_split) -> None:
    """A quick check of every bundle, the slow VGG-19s included (a float16 one reads as float32): its accuracy on the
    first 1,000 test images is within 4.5 points of the 10,000-image figure it records (binomial sd ≈ 1 point)."""
    from detector.data import to_unit_float

    recorded = json.loads((bundle / "metrics.json").read_text())
    model = load_model(bundle).eval()
    assert next(model.parameters()).dtype == torch.float32
    torch.set_num_threads(THREADS)
    with torch.inference_mode():
        pred = torch.cat([model(to_unit_float(test_split.x[i : i + 250])).argmax(1) for i in range(0, 1000, 250)])
    acc = (pred == test_split.y[:1000]).float().mean().item()
    assert abs(acc - recorded["test_accuracy"]) < 0.045, (acc, recorded["test_accuracy"])
