"""The detector pipeline end to end on tiny generated data: `dnd profiles`, `load_detector`, `dnd evaluate`."""

import json
import math
from pathlib import Path

import pytest
import torch

from detector import load_detector
from detector.features import PathLikelihood, feature_count, likelihood_features, path_distances, path_features
from detector.profiles import PROFILES, load_profiles
from detector.scorer import PathScorer
from detector.splits import balanced_subset, split_test
from dnd.cli import main

from .conftest import write_image_folder

TINY = ["--batch-size", "32", "--threads", "2"]
# a CIFAR ResNet-8 of widths 8 / 16 / 32: 6 gated layers, 112 filters; the pipeline is the same as ResNet-20's and
# every fit, attack and scorer costs a fraction (full-size networks are tested where the shipped bundles are)
TINY_NET = ["--blocks-per-stage", "1", "--widths", "8,16,32"]
LAYERS = 6
# `dnd profiles` without CW / DeepFool (the defaults add them: DeepFool ~0.25 s per image, a minute or more here)
# and with 30 trees per family instead of 300 (the fit's cost grows with them; the behaviour tested does not)
CHEAP = ["--calib-attacks", "fgsm,pgd", "--calib-train-subset", "0", "--tree-iterations", "30"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data"), n_train=30, n_test=10)


@pytest.fixture(scope="module")
def bundle(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(runs / "dense"),
                "--epochs",
                "6",
                "--lr",
                "0.05",
                *TINY,
                *TINY_NET,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(runs / "dec"),
                "--decouple",
                "--init",
                str(runs / "dense"),
                "--epochs",
                "2",
                "--target-flops",
                "0.7",
                "--target-ramp-epochs",
                "0.5",
                "--lambda-kd",
                "0",
                *TINY,
            ]
        )
        == 0
    )
    # (no distillation: from this 6-epoch teacher on 300 images it left whole classes misclassified, and profiles
    # need at least one correct image per class)
    assert main(["profiles", "--model", str(runs / "dec"), "--data", str(data), "--calib-limit", "0", *CHEAP]) == 0
    return runs / "dec"


def test_profiles_carry_scorer_threshold_and_provenance(bundle: Path) -> None:
    p = load_profiles(bundle)
    assert p.scorer is not None and len(p.freq) == LAYERS
    assert {
        "threshold",
        "target_fpr",
        "calibration",
        "model_weights_sha256",
        "data_fingerprint",
        "images_per_class",
        "created",
    } <= set(p.meta)
    cal = p.meta["calibration"]
    assert cal["attacks"] == ["fgsm", "pgd"] and cal["n_clean"] > 0 and cal["n_attacked"] > 0
    # all 300 tiny training images join the scorer's fit data (--calib-train default); the threshold part stays test
    assert cal["extra_fit_images"] == 300 and 0 < cal["n_extra_clean"] < cal["n_clean"]
    assert cal["extra_attacks"] == ["fgsm", "pgd"]
    assert cal["threshold_images"] == 20 and cal["n_threshold_clean"] <= 20  # 2 of each class's 5 calibration images
    assert cal["fpr_achieved"] <= 0.05


def test_predict_outputs_and_batched_equals_unbatched(bundle: Path) -> None:
    det = load_detector(bundle)
    x = torch.rand(13, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = det.predict(x), det.predict(x, batch_size=4)
    assert a.labels.shape == (13,) and a.probs.shape == (13, 10) and a.scores.shape == (13,)
    assert a.per_layer.shape == (13, LAYERS) and a.is_adversarial.dtype == torch.bool
    assert torch.allclose(a.probs.sum(1), torch.ones(13))
    assert torch.equal(a.is_adversarial, a.scores > det.threshold)
    assert torch.equal(a.labels, b.labels) and torch.allclose(a.scores, b.scores, atol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(a.paths, b.paths))
    assert torch.equal(a.labels, det.model(x).argmax(1))  # det.model is the plain classifier
    # predict runs in eval mode whatever mode a caller left the model or one of its gates in (noise-free, exact z)
    for part in (det.model, next(m for m in det.model.modules() if "Gate" in type(m).__name__)):
        part.train()
        c = det.predict(x)
        assert not any(m.training for m in det.model.modules())
        assert torch.equal(c.scores, a.scores) and all(torch.equal(p, q) for p, q in zip(c.paths, a.paths))


def test_training_images_get_their_own_attack_list(bundle: Path, data: Path, tmp_path: Path) -> None:
    import shutil

    b = shutil.copytree(bundle, tmp_path / "dec")
    before = load_profiles(bundle).meta["calibration"]
    assert main(["profiles", "--model", str(b), "--data", str(data), "--calib-train-attacks", "fgsm", *CHEAP]) == 0
    cal = load_profiles(b).meta["calibration"]
    assert cal["attacks"] == ["fgsm", "pgd"] and cal["extra_attacks"] == ["fgsm"]
    assert cal["n_clean"] == before["n_clean"] and cal["n_attacked"] < before["n_attacked"]  # no PGD on training images


def test_a_subset_of_training_images_gets_the_minimal_attacks(bundle: Path, data: Path, tmp_path: Path) -> None:
    import shutil

    b = shutil.copytree(bundle, tmp_path / "dec")
    before = load_profiles(bundle).meta["calibration"]
    assert (
        main(
            [
                "profiles",
                "--model",
                str(b),
                "--data",
                str(data),
                "--calib-attacks",
                "fgsm,pgd",
                "--calib-train-subset",
                "10",
                "--calib-train-subset-attacks",
                "fgsm,deepfool",
                "--tree-iterations",
                "30",
            ]
        )
        == 0
    )
    cal = load_profiles(b).meta["calibration"]
    # FGSM already ran on every training image: only DeepFool is added, on 10 of them, and no clean row
    assert cal["extra_subset_images"] == 10 and cal["extra_subset_attacks"] == ["deepfool"]
    assert cal["n_clean"] == before["n_clean"] and before["n_attacked"] < cal["n_attacked"] <= before["n_attacked"] + 10
    assert "extra_subset_images" not in before  # the fixture turned it off
    # one tree model per family: FGSM + PGD, and DeepFool (its CW partner did not run); the default log priors
    assert cal["families"] == [["fgsm", "pgd"], ["deepfool"]] and before["families"] == [["fgsm", "pgd"]]
    from detector.calibration import CalibrationConfig

    default_prior = list(CalibrationConfig().family_log_prior)
    assert cal["family_log_prior"] == default_prior and before["family_log_prior"] == [0.0]
    sc = load_profiles(b).scorer
    assert sc.trees is not None and len(sc.trees.baseline) == 2 and sc.log_prior.tolist() == default_prior
    assert cal["fpr_achieved"] <= 0.05
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = load_detector(b).predict(x)
    assert torch.equal(out.is_adversarial, out.scores > load_detector(b).threshold)
    assert (
        main(["profiles", "--model", str(b), "--data", str(data), "--calib-train", "0", "--calib-train-subset", "5"])
        != 0
    )


def _profiles_config(*flags: str):
    from dnd.cli import build_parser
    from dnd.commands.detect import calibration_config

    return calibration_config(build_parser().parse_args(["profiles", "--model", "m", "--data", "d", *flags]))


def test_profiles_defaults_are_what_the_shipped_profiles_used() -> None:
    from detector.calibration import CalibrationConfig
    from dnd.cli import build_parser

    a = build_parser().parse_args(["profiles", "--model", "m", "--data", "d"])
    assert a.calib_attacks == "fgsm,pgd,cw,deepfool" and a.calib_train == 30000 and a.calib_train_subset is None
    assert a.calib_train_attacks == "fgsm,pgd" and a.calib_train_subset_attacks == "cw,deepfool"
    assert a.families == "fgsm+pgd,cw+deepfool" and a.family_log_prior is None  # -> the default families' priors
    d = CalibrationConfig()
    assert _profiles_config() == d and d.train_subset == 2000
    sub = lambda *f: _profiles_config(*f).train_subset  # noqa: E731
    assert sub("--calib-train", "300") == 300 and sub("--calib-train", "0") == 0  # follows --calib-train
    assert sub("--calib-train-subset", "0") == 0 and sub("--calib-train", "300", "--calib-train-subset", "10") == 10
    with pytest.raises(ValueError, match="--calib-train is 0"):
        sub("--calib-train", "0", "--calib-train-subset", "5")
    shipped = load_profiles(Path(__file__).parents[1] / "models" / "resnet20-decoupled").meta["calibration"]
    assert shipped["attacks"] == a.calib_attacks.split(",") and shipped["extra_fit_images"] == a.calib_train
    assert shipped["extra_subset_images"] == d.train_subset and shipped["extra_subset_attacks"] == ["cw", "deepfool"]
    assert shipped["families"] == [["fgsm", "pgd"], ["cw", "deepfool"]]
    assert shipped["family_log_prior"] == list(d.family_log_prior) == [0.0, 0.0]


def test_families_must_cover_every_attack_once() -> None:
    assert _profiles_config("--families", "fgsm+pgd,cw+deepfool").families == (("fgsm", "pgd"), ("cw", "deepfool"))
    base = ("--calib-attacks", "fgsm,pgd", "--calib-train", "0")
    with pytest.raises(ValueError, match="missing pgd"):
        _profiles_config(*base, "--families", "fgsm,cw+deepfool")
    with pytest.raises(ValueError, match="twice pgd"):
        _profiles_config(*base, "--families", "fgsm+pgd,pgd+cw")
    with pytest.raises(ValueError, match="unknown attack"):
        _profiles_config(*base, "--families", "fgsm+bim")
    for bad in ("0", "0,x"):  # checked before any model or data is loaded
        assert main(["profiles", "--model", "m", "--data", "d", "--family-log-prior", bad]) != 0


def test_threshold_override(bundle: Path) -> None:
    x = torch.rand(8, 3, 32, 32)
    hi, lo = load_detector(bundle, threshold=1e9), load_detector(bundle, threshold=-1e9)
    assert hi.threshold == 1e9 and not hi.predict(x).is_adversarial.any() and lo.predict(x).is_adversarial.all()


@pytest.mark.parametrize(
    "x, msg",
    [
        (torch.rand(2, 3, 28, 28), "shape"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.full((2, 3, 32, 32), 2.0), r"\[0, 1\]"),
        ("img", "Tensor"),
        (
            torch.full((2, 3, 32, 32), 0.5).index_put_((torch.tensor(1),), torch.tensor(-0.1)),
            r"\[0, 1\], found range \[-0.100000001, 0.5\]",
        ),
        (
            torch.full((2, 3, 32, 32), 0.5).index_put_((torch.tensor(0),), torch.tensor(float("nan"))),
            r"\[0, 1\], found 3072 NaN value\(s\)",
        ),  # image 0: 3 x 32 x 32
        (
            torch.full((2, 3, 32, 32), 0.5).index_put_((torch.tensor(0),), torch.tensor(float("inf"))),
            r"\[0, 1\], found range \[0.5, inf\]",
        ),
    ],
)
def test_predict_rejects_bad_input_clearly(bundle: Path, x, msg: str) -> None:
    with pytest.raises((ValueError, TypeError), match=msg):
        load_detector(bundle).predict(x)


def test_profiles_of_other_weights_are_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil

    from detector.bundle import load_model, save_bundle

    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    m = load_model(other)
    with torch.no_grad():
        m.fc.bias.add_(0.1)
    save_bundle(m, other, {})
    with pytest.raises(ValueError, match="rebuild with `dnd profiles"):
        load_detector(other)


def test_profiles_with_an_older_feature_set_are_refused(bundle: Path, tmp_path: Path) -> None:
    import shutil
    from dataclasses import replace

    from detector.profiles import PathProfiles, save_profiles

    other = tmp_path / "old"
    shutil.copytree(bundle, other)
    p = load_profiles(other)
    # the older feature layout: without the likelihood columns (2L + 1 of them) and the gate logits
    n_lik = 2 * len(p.freq) + 1
    old = feature_count([f.shape[1] for f in p.freq]) - n_lik
    sc = replace(p.scorer, mean=p.scorer.mean[:old], scale=p.scorer.scale[:old], coef=p.scorer.coef[:old])
    save_profiles(PathProfiles(p.freq, p.counts, p.meta, sc), other, p.meta["data_fingerprint"])  # no gate_mean
    with pytest.raises(ValueError, match=f"fitted on {old} path features, this version computes {old + n_lik}"):
        load_detector(other)


def test_profiles_without_gate_logits_still_score(bundle: Path, data: Path, tmp_path: Path) -> None:
    """--without-gate-logits: the scorer reads z only, and the detector serves it."""
    import shutil

    other = tmp_path / "z-only"
    shutil.copytree(bundle, other)
    assert main(["profiles", "--model", str(other), "--data", str(data), "--without-gate-logits", *CHEAP]) == 0
    p, q = load_profiles(other), load_profiles(bundle)
    assert p.gate_mean is None and q.gate_mean is not None
    widths = [f.shape[1] for f in p.freq]
    assert p.scorer.mean.numel() == feature_count(widths) and q.scorer.mean.numel() == feature_count(widths, True)
    det = load_detector(other)
    x = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = det.predict(x), det.predict(x, batch_size=4)
    assert torch.equal(a.labels, load_detector(bundle).predict(x).labels)
    # batches of other sizes round differently (~1e-6): a gate logit that close to 0 may flip its filter, and the
    # score with it; every other image scores the same
    same = torch.stack([(p == q).all(1) for p, q in zip(a.paths, b.paths)]).all(0)
    near_zero = torch.stack([s.abs().amin(1) < 1e-4 for s in a.gate_logits]).any(0)
    assert bool((same | near_zero).all()) and torch.allclose(a.scores[same], b.scores[same], atol=1e-5)
    with pytest.raises(ValueError, match="scores gate logits too: pass s"):
        load_detector(bundle).path_features(a.paths, a.labels)


def test_dense_bundle_and_missing_profiles_give_clear_errors(bundle: Path, tmp_path: Path) -> None:
    import shutil

    dense = bundle.parent / "dense"
    with pytest.raises(ValueError, match="dense"):
        load_detector(dense)
    bare = tmp_path / "bare"
    shutil.copytree(bundle, bare)
    (bare / PROFILES).unlink()
    with pytest.raises(FileNotFoundError, match="dnd profiles"):
        load_detector(bare)


def test_interrupted_regenerate_leaves_old_profiles(bundle: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import detector.profiles as prof

    before = (bundle / PROFILES).read_bytes()

    def crash(tensors, path, metadata=None):  # writes half a file, then dies
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(prof, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        main(["profiles", "--model", str(bundle), "--data", str(data), "--calib-limit", "0", *CHEAP])
    assert (bundle / PROFILES).read_bytes() == before
    load_detector(bundle)  # still loads
    for tmp in bundle.glob(f".{PROFILES}.tmp*"):
        tmp.unlink()


def test_split_is_disjoint_balanced_and_deterministic() -> None:
    y = torch.arange(10).repeat_interleave(7)[torch.randperm(70, generator=torch.Generator().manual_seed(1))]
    cal, ev = split_test(y, 10)
    assert len(set(cal.tolist()) & set(ev.tolist())) == 0 and len(cal) + len(ev) == 70
    assert torch.bincount(y[cal], minlength=10).tolist() == [3] * 10
    assert torch.equal(cal, split_test(y, 10)[0])
    sub = balanced_subset(ev, y, 20, 10)
    assert len(sub) == 20 and torch.bincount(y[sub], minlength=10).tolist() == [2] * 10


def test_soft_distances_equal_hard_ones_on_binary_paths() -> None:
    g = torch.Generator().manual_seed(0)
    z = [torch.rand(6, c, generator=g) > 0.5 for c in (4, 8)]
    freq = [torch.rand(3, c, generator=g) for c in (4, 8)]
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    sig = [f >= 0.5 for f in freq]
    for hard, soft in zip(path_distances(z, labels, sig), path_distances([zl.float() for zl in z], labels, sig)):
        assert torch.equal(hard, soft)
    assert torch.equal(path_features(z, labels, freq), path_features([zl.float() for zl in z], labels, freq))
    # the all-layers-at-once features are the per-layer definitions, column by column
    ref = [s[labels] for s in sig]
    ham = torch.stack([(zl != r).float().mean(1) for zl, r in zip(z, ref)], 1)
    jac = torch.stack([1 - (zl & r).sum(1) / (zl | r).sum(1).clamp_min(1) for zl, r in zip(z, ref)], 1)
    jac[torch.stack([(zl | r).sum(1) == 0 for zl, r in zip(z, ref)], 1)] = 0
    dev = torch.cat([zl.float() - f[labels] for zl, f in zip(z, freq)], 1)
    assert torch.equal(path_features(z, labels, freq)[:, : 4 + 12], torch.cat([ham, jac, dev], 1))
    v = [torch.rand(6, c, generator=g).requires_grad_(True) for c in (4, 8)]  # soft paths: gradients reach every filter
    path_features(v, labels, freq)[:, :4].sum().backward()
    assert all(vl.grad is not None and bool((vl.grad != 0).all()) for vl in v)


def test_gate_logit_features_are_deviations_from_the_class_mean() -> None:
    g = torch.Generator().manual_seed(3)
    widths = (4, 8)
    z = [torch.rand(5, c, generator=g) > 0.5 for c in widths]
    freq = [torch.rand(3, c, generator=g) for c in widths]
    s = [torch.randn(5, c, generator=g) for c in widths]
    gm = [torch.randn(3, c, generator=g) for c in widths]
    labels = torch.tensor([0, 2, 1, 1, 0])
    feats = path_features(z, labels, freq, s=s, gate_mean=gm)
    assert feats.shape == (5, feature_count(list(widths), gate_logits=True)) == (5, feature_count(list(widths)) + 12)
    assert torch.equal(
        feats[:, : feature_count(list(widths))], path_features(z, labels, freq)
    )  # the z columns unchanged
    want = torch.cat([sl - gl[labels] for sl, gl in zip(s, gm)], 1)
    assert torch.equal(feats[:, -12:], want)
    v = [sl.clone().requires_grad_(True) for sl in s]  # what the adaptive attack differentiates through
    path_features(z, labels, freq, s=v, gate_mean=gm)[:, -12:].sum().backward()
    assert all(bool((vl.grad == 1).all()) for vl in v)
    with pytest.raises(ValueError, match="need both the gate logits s and the profiles' gate_mean"):
        path_features(z, labels, freq, s=s)


def test_features_first_built_in_inference_mode_still_differentiate() -> None:
    """Detector.predict (inference mode) and then the adaptive attack (autograd) in one process: the per-width tensors
    cached by the first call must serve the second. Widths used by no other test, so this one makes the first call."""
    g = torch.Generator().manual_seed(2)
    freq = [torch.rand(2, c, generator=g) for c in (3, 7, 5)]
    with torch.inference_mode():
        path_features([torch.rand(4, c, generator=g) > 0.5 for c in (3, 7, 5)], torch.tensor([0, 1, 1, 0]), freq)
    v = [torch.rand(4, c, generator=g).requires_grad_(True) for c in (3, 7, 5)]
    path_features(v, torch.tensor([0, 1, 1, 0]), freq).sum().backward()
    assert all(vl.grad is not None for vl in v)


def test_path_likelihoods_exact_on_a_hand_built_case() -> None:
    # 2 layers, 2 classes. Layer 0: 2 filters, layer 1: 1 filter (frequency 0 is clamped to eps = 1e-3).
    freq = [torch.tensor([[0.9, 0.2], [0.1, 0.5]]), torch.tensor([[0.0], [0.6]])]
    z = [torch.tensor([[True, False]]), torch.tensor([[True]])]
    ll = PathLikelihood.from_freq(freq)(z)
    log = math.log
    want = torch.tensor([[[log(0.9) + log(0.8), log(0.1) + log(0.5)], [log(1e-3), log(0.6)]]])
    assert ll.shape == (1, 2, 2) and torch.allclose(ll, want, atol=1e-6)
    f = likelihood_features(ll, torch.tensor([0]))
    # own (per layer), margin over the other class (per layer), margin of the summed log-likelihoods
    own, margin = want[0, :, 0], want[0, :, 0] - want[0, :, 1]
    assert torch.allclose(f, torch.cat([own, margin, margin.sum().view(1)]).view(1, 5), atol=1e-6)
    feats = path_features(z, torch.tensor([0]), freq)
    assert feats.shape == (1, feature_count([2, 1])) == (1, 4 * 2 + 1 + 3)
    assert torch.allclose(feats[:, -5:], f)


def test_likelihood_features_are_differentiable_in_soft_paths() -> None:
    g = torch.Generator().manual_seed(0)
    freq = [torch.rand(3, c, generator=g) for c in (4, 8)]
    v = [torch.rand(5, c, generator=g).requires_grad_(True) for c in (4, 8)]
    path_features(v, torch.tensor([0, 1, 2, 0, 1]), freq)[:, -5:].sum().backward()
    assert all(vl.grad is not None and vl.grad.abs().sum() > 0 for vl in v)


@pytest.mark.parametrize("trees", [False, True])
def test_scorer_ranks_separable_data(trees: bool) -> None:
    g = torch.Generator().manual_seed(0)
    clean, attacked = torch.randn(200, 5, generator=g), torch.randn(100, 5, generator=g) + 2
    s = PathScorer.fit(clean, {"a": attacked}, trees=trees)
    assert s.score(attacked).mean() > s.score(clean).mean() + 2
    t = PathScorer.from_tensors(s.tensors())
    assert torch.equal(t.score(clean), s.score(clean)) and torch.equal(t.surrogate(clean), s.surrogate(clean))
    x = clean[:4].clone().requires_grad_(True)
    s.surrogate(x).sum().backward()  # the adaptive attack's gradient path
    assert x.grad.abs().sum() > 0


def test_tree_ensemble_walk_equals_sklearn() -> None:
    """The exported trees, walked by the compiled kernel, reach scikit-learn's leaves: the same log-odds up to summation
    order (a wrong leaf is off by >= 1e-3), including ties at split thresholds (the integer column)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from detector.trees import TreeEnsemble

    g = torch.Generator().manual_seed(1)
    # float32 values (what path_features gives), held as float64 for scikit-learn
    x = torch.cat([torch.randn(300, 7, generator=g), torch.randint(0, 3, (300, 1), generator=g).float()], 1).double()
    y = ((x[:, 0] + x[:, 1] * x[:, 2] + x[:, 7]) > 0.5).double()
    clf = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=15, random_state=0).fit(x.numpy(), y.numpy())
    # a second model with other trees (deeper, other target): both walked together, each summed into its own column
    clf2 = HistGradientBoostingClassifier(max_iter=25, max_leaf_nodes=40, random_state=0).fit(
        x.numpy(), (x[:, 3] > 0).numpy()
    )
    ens = TreeEnsemble.from_sklearn([clf, clf2])
    probe = torch.cat([x, torch.randn(50, 8, generator=g).double()])  # randn is float32: exact in float64
    want = torch.stack([torch.from_numpy(c.decision_function(probe.numpy())) for c in (clf, clf2)], 1)
    torch.testing.assert_close(ens.raw(probe), want, rtol=0, atol=1e-12)
    assert torch.equal(TreeEnsemble.from_tensors(ens.tensors()).raw(probe), ens.raw(probe))
    assert torch.equal(ens.raw(probe[:1]), ens.raw(probe)[:1])  # batched == unbatched
    assert ens.raw(probe[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match=r"expected \(N, F\) path features with F > 7 .* found shape \(350, 5\)"):
        ens.raw(probe[:, :5])  # too few columns would read past each row: refused, not walked
    # a scorer of one tree model stored without its group tensor
    one = TreeEnsemble.from_sklearn([clf]).tensors()
    del one["scorer.trees.group"]
    torch.testing.assert_close(TreeEnsemble.from_tensors(one).raw(probe)[:, 0], want[:, 0], rtol=0, atol=1e-12)


def test_family_scorer_is_the_mixture_log_odds_and_round_trips() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(300, 4, generator=g)
    up, down = torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g)
    up[:, 0] += 3
    down[:, 1] -= 3  # two families that move different features in different directions
    s = PathScorer.fit(clean, {"up": up, "down": down}, [["up"], ["down"]], [0.0, -1.0])
    assert s.trees is not None and len(s.trees.baseline) == 2 and s.log_prior.tolist() == [0.0, -1.0]
    probe = torch.cat([torch.randn(50, 4, generator=g), up[:20], down[:20]])
    raw = s.family_scores(probe)
    want = torch.log(torch.exp(raw[:, 0]) + torch.exp(raw[:, 1] - 1)).float()
    torch.testing.assert_close(s.score(probe), want)
    assert s.score(up).median() > 0 and s.score(down).median() > 0  # each family caught by its own model
    assert torch.equal(PathScorer.from_tensors(s.tensors()).score(probe), s.score(probe))
    t = s.tensors()
    with pytest.raises(ValueError, match=r"one log prior per tree model, shape \(2,\)"):
        PathScorer.from_tensors(t | {"scorer.log_prior": t["scorer.log_prior"][:1]})
    with pytest.raises(ValueError, match="unexpected scorer tensors"):
        PathScorer.from_tensors(t | {"scorer.reference": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="have no rows"):
        PathScorer.fit(clean, {"up": up}, [["up"], ["down"]])
    with pytest.raises(ValueError, match="one log prior per family"):
        PathScorer.fit(clean, {"up": up, "down": down}, [["up"], ["down"]], [0.0])
    # a family without rows drops out with its prior; a scorer of one model and no prior scores its log-odds
    one = PathScorer.fit(clean, {"up": up, "down": down[:0]}, [["up"], ["down"]], [0.0, -1.0])
    assert one.log_prior.tolist() == [0.0] and len(one.trees.baseline) == 1
    old = {k: v for k, v in one.tensors().items() if k not in ("scorer.log_prior", "scorer.trees.group")}
    torch.testing.assert_close(PathScorer.from_tensors(old).score(probe), one.trees.raw(probe)[:, 0].float())


@pytest.mark.parametrize("relax, orthogonal", [("st", False), (0.5, False), ("st", True)])
def test_adaptive_attack_stays_in_eps_ball_and_keeps_what_breaks_the_real_detector(
    bundle: Path, relax: str | float, orthogonal: bool
) -> None:
    from detector.adaptive import DetectorObjective, adaptive_pgd

    det = load_detector(bundle)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    y = det.predict(x).labels
    obj = DetectorObjective(det)
    x_adv = adaptive_pgd(obj, x, y, 8 / 255, steps=4, restarts=2, relax=relax, orthogonal=orthogonal)
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and (x_adv - x).abs().max() <= 8 / 255 + 1e-6
    # success is the real detector's verdict: misclassified and not flagged
    p = det.predict(x_adv)
    assert torch.equal(obj.broken(x_adv, y), (p.labels != y) & ~p.is_adversarial)


def test_relaxed_gates_straight_through_is_exact_and_sigmoid_is_smooth(bundle: Path) -> None:
    det = load_detector(bundle)
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    xg = x.clone().requires_grad_(True)
    with det.model.straight_through_paths():
        out = det.model.forward_paths(xg)
        out.z[5].sum().backward()
    assert torch.equal(out.logits.detach(), det.model(x).detach()) and xg.grad.abs().sum() > 0
    with det.model.relaxed_paths(0.5):
        soft = det.model.forward_paths(x)
    s = soft.s[5]
    assert torch.allclose(soft.z[5], torch.sigmoid(s / 0.5)) and all(u.relax is None for u in det.model.units())


def test_network_alone_attacks_follow_the_gates_gradient(bundle: Path) -> None:
    # the evaluation's network-alone attacks run on det.model itself; through straight-through gates the forward is
    # unchanged but the gates pass a gradient, so FGSM's step differs from the one with the gates' gradient blocked
    import torchattacks

    from detector.adaptive.evaluation import network_alone

    det = load_detector(bundle)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = det.predict(x).labels
    fgsm = torchattacks.FGSM(det.model, eps=8 / 255)
    st, hard = network_alone(det, fgsm)(x, y), network_alone(det, fgsm, "hard")(x, y)
    assert torch.equal(hard, fgsm(x, y)) and not torch.equal(st, hard)
    assert (st - x).abs().max() <= 8 / 255 + 1e-6 and all(u.relax is None for u in det.model.units())


def test_detector_aware_square_succeeds_only_when_misclassified_and_unflagged(bundle: Path) -> None:
    from detector.adaptive import DetectorAwareSquare

    det = load_detector(bundle)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    y = det.predict(x).labels
    sq = DetectorAwareSquare(det, eps=8 / 255, n_queries=20)
    m, _ = sq.margin_and_loss(x, y)
    p = det.predict(x)
    assert torch.equal(m <= 0, (p.labels != y) & ~p.is_adversarial)  # correct images: margin > 0
    adv = sq(x, y)
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6


def test_evaluate_smoke_writes_report(bundle: Path, data: Path, tmp_path: Path) -> None:
    """The whole protocol on the tiny bundle: known, leave-one-out, unseen (incl. a transfer from the dense bundle),
    corruptions, every detector with intervals, adaptive; a re-run reuses the saved attack sets."""
    out = tmp_path / "report"
    args = [
        "evaluate",
        "--model",
        str(bundle),
        "--data",
        str(data),
        "--attacks",
        "fgsm,pgd,cw",
        "--unseen",
        "pgdl2,transfer",
        "--source",
        str(bundle.parent / "dense"),
        "--corruptions",
        "gaussian_noise,pixelate",
        "--slow-limit",
        "10",
        "--adaptive-limit",
        "10",
        "--adaptive-eps",
        "4,8",
        "--adaptive-steps",
        "3",
        "--adaptive-restarts",
        "2",
        "--square-queries",
        "10",
        "--no-autoattack",
        "--bootstrap",
        "20",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    from detector.evaluation import DETECTORS

    r = json.loads((out / "report.json").read_text())
    assert 0 <= r["clean_accuracy"] <= 1 and list(r["attacks"]) == ["fgsm", "pgd", "cw", "pgdl2", "transfer"]
    assert [a["role"] for a in r["attacks"].values()] == ["known"] * 3 + ["unseen"] * 2
    for name, a in r["attacks"].items():
        assert {"success_rate", "n_adv", "detectors", "what", "params"} <= set(a)
        assert set(a["detectors"]) == set(DETECTORS)
        for d in a["detectors"].values():
            if a["n_adv"]:
                assert 0 <= d["auroc"] <= 1 and d["auroc_ci"][0] <= d["auroc"] <= d["auroc_ci"][1]
            else:
                assert d["auroc"] is None
        if name in ("fgsm", "pgd", "transfer"):
            assert a["linf_max"] <= 8 / 255 + 1e-6
    assert r["attacks"]["cw"]["images_attacked"] <= 10
    # each known attack that succeeded on the refit images is left out once (on this tiny network CW may never
    # succeed: then it has n_adv 0, no AUROC, no leave-one-out, and the report says so rather than crashing)
    assert set(r["leave_one_out"]) == {a for a, n in r["refit_attacked"].items() if n} >= {"fgsm", "pgd"}
    assert set(r["leave_one_out"]["pgd"]) == {"path_refit", "maha_ensemble", "lid"}
    assert (
        set(r["corruptions"]) == {"gaussian_noise", "pixelate"}
        and not r["corruptions"]["pixelate"]["in_fit_augmentation"]
    )
    assert set(r["summary"]) == set(DETECTORS) and r["fitted_on"].startswith("clean images against")
    ad = r["adaptive"]
    assert list(ad["budgets"]) == ["4/255", "8/255"] and ad["n"] == 10
    for row in ad["budgets"].values():
        attacks = ("pgd-st", "pgd-sigmoid", "opgd-st", "square", "apgd-ce", "apgd-ce-gates-blocked")
        alone = ("model_alone_apgd_ce", "model_alone_apgd_ce_gates_blocked")
        assert all(0 <= row[a] <= 1 for a in (*attacks, *alone))
        assert row["worst_case"] <= min(row[a] for a in attacks)  # an image is kept only if every attack fails
        # correct under every attack <= correct under one; a correct image is kept, so rejection never subtracts
        assert row["model_alone_worst"] <= min(row[a] for a in alone)
        assert row["model_alone_worst"] <= row["worst_case"] <= row["model_alone_worst"] + row["detector_adds"] + 1e-9
        assert row["model_alone_apgd_ce"] <= row["apgd-ce"]  # the same images, judged with and without rejection
    assert {"pgd-st_20_steps_1_restart", "pgd-st_unbounded", "more_steps_never_raise"} <= set(ad["sanity"])
    assert isinstance(ad["sanity"]["gate_gradient_never_weakens"], bool)
    assert (out / "report.md").read_text().startswith("# Detection report")
    assert all((out / f).stat().st_size > 0 for f in ("roc.png", "generalisation.png", "corruptions.png"))
    saved = out / "attacks" / "pgd.safetensors"
    assert saved.is_file()
    stamp = saved.stat().st_mtime_ns
    assert main(args) == 0 and saved.stat().st_mtime_ns == stamp  # reused, not recomputed


def test_evaluate_with_known_attacks_only(bundle: Path, data: Path, tmp_path: Path, capsys) -> None:
    # `--unseen ''` and `--corruptions ''` are offered as "none": the unsupervised detectors then have no held-out
    # figure at all (no leave-one-out refit either), which the summary, report and console line must say, not crash on
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(bundle), "--data", str(data), "--attacks", "fgsm,pgd", "--unseen", ""]
    args += ["--corruptions", "", "--adaptive-limit", "0", "--bootstrap", "20", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "report.json").read_text())
    assert list(r["attacks"]) == ["fgsm", "pgd"] and r["corruptions"] == {}
    assert r["summary"]["msp"]["worst_held_out_or_unseen"] is None  # the served `path` is not refitted either
    assert r["summary"]["path_refit"]["worst_held_out_or_unseen_on"].startswith("without ")
    assert "held-out or unseen none evaluated" in capsys.readouterr().out
    assert "| —" in (out / "report.md").read_text()


def test_unknown_attack_name_is_a_clear_cli_error(bundle: Path, data: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["evaluate", "--model", str(bundle), "--data", str(data), "--attacks", "pgd,foo", "--out", str(tmp_path)])
        == 2
    )
    assert "unknown attack" in capsys.readouterr().err


@pytest.mark.parametrize("n", [1, 5, 64])
def test_traced_forward_gives_the_same_predictions(bundle: Path, n: int) -> None:
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
    eager, traced = load_detector(bundle).predict(x), load_detector(bundle).trace().predict(x)
    assert torch.equal(eager.labels, traced.labels) and torch.allclose(eager.probs, traced.probs, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(eager.paths, traced.paths))
    assert torch.allclose(eager.scores, traced.scores, atol=1e-5)


def test_a_second_traced_detector_reuses_the_graph_with_its_own_weights(tmp_path: Path) -> None:
    from .conftest import write_detector_bundle

    a, b = write_detector_bundle(tmp_path / "a", seed=0), write_detector_bundle(tmp_path / "b", seed=1)
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = load_detector(a).trace()  # traces (or reuses a graph traced earlier in this process)
    second = load_detector(b).trace()
    assert second._traced is not first._traced
    for bundle_dir, traced in ((a, first), (b, second)):
        eager = load_detector(bundle_dir).predict(x)
        got = traced.predict(x)
        assert torch.equal(eager.labels, got.labels) and torch.allclose(eager.probs, got.probs, atol=1e-6)
        assert all(torch.equal(p, q) for p, q in zip(eager.paths, got.paths))


def test_attack_cli_writes_sets_within_budget(bundle: Path, data: Path, tmp_path: Path, capsys) -> None:
    from detector.attacks import load_attack_set

    assert (
        main(
            [
                "attack",
                "--model",
                str(bundle),
                "--data",
                str(data),
                "--attack",
                "fgsm,pgd",
                "--limit",
                "20",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "success rate" in capsys.readouterr().out
    for name in ("fgsm", "pgd"):
        s = load_attack_set(tmp_path / f"{name}.safetensors")
        assert s.name == name and s.params["eps"] == pytest.approx(8 / 255) and len(s.y) <= 20
        assert (s.x_adv - s.x_clean).abs().max() <= 8 / 255 + 1e-6 and s.x_adv.min() >= 0 and s.x_adv.max() <= 1
