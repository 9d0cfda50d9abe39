import os
from pathlib import Path

import pytest
import torch

from detector import ModelConfig, build_model, save_bundle
from detector.features import path_distances
from detector.profiles import PROFILES, build_profiles, load_profiles, save_profiles
from detector.scorer import calibrate_threshold

from .conftest import tiny_decoupled_model


def test_hamming_and_jaccard_exact_on_hand_built_paths() -> None:
    sig = [
        torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool),
        torch.tensor([[1, 0], [0, 0]], dtype=torch.bool),
    ]
    z = [
        torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool),
        torch.tensor([[1, 0], [1, 1], [0, 0]], dtype=torch.bool),
    ]
    labels = torch.tensor([0, 0, 1])
    ham, jac = path_distances(z, labels, sig)
    # layer 0: [1000] vs [1100]: 1 of 4 differ, J = 1 - 1/2; [1111] vs [1100]: 2/4, J = 1 - 2/4; exact match: 0, 0
    # layer 1: [10] vs [10]: 0, 0; [11] vs [10]: 1/2, J = 1 - 1/2; both empty: 0, 0
    assert torch.equal(ham, torch.tensor([[0.25, 0.0], [0.5, 0.5], [0.0, 0.0]]))
    assert torch.equal(jac, torch.tensor([[0.5, 0.0], [0.5, 0.5], [0.0, 0.0]]))


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.2])
def test_threshold_hits_target_fpr_on_calibration_data(fpr: float) -> None:
    scores = torch.rand(1000, generator=torch.Generator().manual_seed(0))
    t = calibrate_threshold(scores, fpr)
    achieved = (scores > t).sum().item() / len(scores)
    assert fpr - 1 / 1000 <= achieved <= fpr


def _tiny_bundle(tmp_path: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    m = tiny_decoupled_model(seed)
    save_bundle(m, tmp_path / "b", {})
    return tmp_path / "b", m


def test_profiles_count_only_correct_images_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, m = _tiny_bundle(tmp_path)
    y = torch.arange(10).repeat(4)  # 4 images per class
    logits = torch.nn.functional.one_hot(y, 10).float()
    logits[[0, 10]] = torch.nn.functional.one_hot(torch.tensor([5, 5]), 10).float()  # two class-0 images misclassified
    z = [torch.zeros(40, u.cout, dtype=torch.bool) for u in m.units()]
    z[0][:, 0] = True  # filter 0 of layer 0 always open
    z[0][y == 0, 1] = True  # filter 1 only for class 0 ...
    z[0][0, 1] = False  # ... except the (misclassified) image 0, which must not count anyway
    z[0][20, 2] = True  # filter 2 for one of the 3 counted class-0 images (20, 30 and this one)
    s = [torch.zeros(40, u.cout) for u in m.units()]
    s[1][:, 0] = torch.arange(40.0)  # class 0's counted images are 20 and 30 (0 and 10 are misclassified): mean 25
    import detector.profiles as prof

    monkeypatch.setattr(prof, "collect_gate_paths", lambda *a, **k: (logits, z, s))
    p = build_profiles(m, torch.zeros(40, 3, 32, 32), y)
    assert p.counts.tolist() == [2] + [4] * 9 and p.meta["images_correct"] == 38
    assert p.freq[0][:, 0].tolist() == [1.0] * 10
    assert p.freq[0][:, 1].tolist() == [1.0] + [0.0] * 9
    assert p.freq[0][0, 2].item() == 0.5 and p.signatures()[0][0, 2].item() is True  # >= 0.5 is in the signature
    # class c's images are c, c+10, c+20, c+30: mean c+15 for c > 0
    assert p.gate_mean[1][:, 0].tolist() == [25.0] + [c + 15.0 for c in range(1, 10)]
    assert all(g.shape == f.shape for g, f in zip(p.gate_mean, p.freq))
    save_profiles(p, bundle, "fp")
    q = load_profiles(bundle)
    assert all(torch.equal(a, b) for a, b in zip(p.freq, q.freq))
    assert all(torch.equal(a, b) for a, b in zip(p.gate_mean, q.gate_mean))
    assert q.meta["data_fingerprint"] == "fp" and q.meta["images_per_class"] == [2] + [4] * 9
    assert build_profiles(m, torch.zeros(40, 3, 32, 32), y, gate_logits=False).gate_mean is None


def test_profiles_need_every_class(tmp_path: Path) -> None:
    _, m = _tiny_bundle(tmp_path)
    x = torch.rand(30, 3, 32, 32)
    y = m(x).argmax(1)
    y[y == 3] = 4  # class 3 never appears as a label
    with pytest.raises(ValueError, match="no correctly classified images of class.*cat"):
        build_profiles(m, x, y)


def test_dense_model_has_no_profiles() -> None:
    with pytest.raises(ValueError, match="dense"):
        build_profiles(build_model(ModelConfig()), torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))


def _profiles_by_hand() -> "PathProfiles":  # noqa: F821
    from detector.profiles import PathProfiles

    freq = [
        torch.rand(10, u, generator=torch.Generator().manual_seed(i))
        for i, u in enumerate([16] * 6 + [32] * 6 + [64] * 6)
    ]
    return PathProfiles(freq, torch.full((10,), 7), {})


def test_profiles_for_other_weights_are_refused(tmp_path: Path) -> None:
    bundle, _ = _tiny_bundle(tmp_path)
    save_profiles(_profiles_by_hand(), bundle, "fp")
    other, _ = _tiny_bundle(tmp_path / "o", seed=1)
    os.replace(other / "model.safetensors", bundle / "model.safetensors")  # weights changed after profiling
    with pytest.raises(ValueError, match="built for model weights .* rebuild"):
        load_profiles(bundle)


def test_interrupted_regeneration_leaves_old_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle, _ = _tiny_bundle(tmp_path)
    old = _profiles_by_hand()
    save_profiles(old, bundle, "old")
    before = (bundle / PROFILES).read_bytes()
    import detector.profiles as prof

    def crash(*a, **k):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(
        prof, "save_file", lambda tensors, path, metadata: (Path(path).write_bytes(b"partial"), crash())
    )
    with pytest.raises(KeyboardInterrupt):
        save_profiles(_profiles_by_hand(), bundle, "new")
    assert (bundle / PROFILES).read_bytes() == before
    assert load_profiles(bundle).meta["data_fingerprint"] == "old"
