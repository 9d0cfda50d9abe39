"""`dnd profiles` and its recipe (detector/calibration.py): what the scorer is fitted on, recorded, refused."""

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from detector import load_detector
from detector.features import feature_count
from detector.profiles import PROFILES, load_profiles
from dnd.cli import main

from .pipeline import CHEAP, LAYERS


def test_profiles_carry_scorer_threshold_and_provenance(tiny_bundle: Path) -> None:
    p = load_profiles(tiny_bundle)
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
    lo, hi = cal["fpr_interval"]  # Wilson 95%: about ±15 points on 20 images
    assert 0 <= lo <= cal["fpr_achieved"] < hi <= 1 and hi - lo > 0.1


def test_training_images_get_their_own_attack_list(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    b = shutil.copytree(tiny_bundle, tmp_path / "dec")
    before = load_profiles(tiny_bundle).meta["calibration"]
    assert main(["profiles", "--model", str(b), "--data", str(tiny_data), "--calib-train-attacks", "fgsm", *CHEAP]) == 0
    cal = load_profiles(b).meta["calibration"]
    assert cal["attacks"] == ["fgsm", "pgd"] and cal["extra_attacks"] == ["fgsm"]
    assert cal["n_clean"] == before["n_clean"] and cal["n_attacked"] < before["n_attacked"]  # no PGD on training images


def test_a_subset_of_training_images_gets_the_minimal_attacks(
    tiny_bundle: Path, tiny_data: Path, tmp_path: Path
) -> None:
    import shutil

    b = shutil.copytree(tiny_bundle, tmp_path / "dec")
    before = load_profiles(tiny_bundle).meta["calibration"]
    assert (
        main(
            [
                "profiles",
                "--model",
                str(b),
                "--data",
                str(tiny_data),
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

    default_prior = list(CalibrationConfig().family_log_prior)[:2]  # those of the two families that ran
    assert cal["family_log_prior"] == default_prior and before["family_log_prior"] == [0.0]
    sc = load_profiles(b).scorer
    assert sc.trees is not None and len(sc.trees.baseline) == 2 and sc.log_prior.tolist() == default_prior
    assert cal["fpr_achieved"] <= 0.05
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    out = load_detector(b).predict(x)
    assert torch.equal(out.is_adversarial, out.scores > load_detector(b).threshold)
    assert (
        main(
            ["profiles", "--model", str(b), "--data", str(tiny_data), "--calib-train", "0", "--calib-train-subset", "5"]
        )
        != 0
    )


def _profiles_config(*flags: str):
    from dnd.cli import build_parser
    from dnd.commands.profiles import calibration_config

    return calibration_config(build_parser().parse_args(["profiles", "--model", "m", "--data", "d", *flags]))


def test_profiles_defaults_are_what_the_shipped_profiles_used() -> None:
    from detector.calibration import CalibrationConfig
    from dnd.cli import build_parser

    a = build_parser().parse_args(["profiles", "--model", "m", "--data", "d"])
    assert a.calib_attacks == "fgsm,pgd,cw,deepfool,transfer" and a.calib_train == 30000
    assert a.calib_train_subset is None and a.source == ""  # `make profiles` passes the dense bundle
    assert a.calib_train_attacks == "fgsm,pgd,transfer" and a.calib_train_subset_attacks == "cw,deepfool"
    assert a.families == "fgsm+pgd+transfer,cw+deepfool" and a.family_log_prior is None  # -> the default priors
    assert a.residual and a.transforms == "median,shift" and not a.confidence
    d = CalibrationConfig()
    assert _profiles_config() == d and d.train_subset == 2000
    sub = lambda *f: _profiles_config(*f).train_subset  # noqa: E731
    assert sub("--calib-train", "300") == 300 and sub("--calib-train", "0") == 0  # follows --calib-train
    assert sub("--calib-train-subset", "0") == 0 and sub("--calib-train", "300", "--calib-train-subset", "10") == 10
    with pytest.raises(ValueError, match="--calib-train is 0"):
        sub("--calib-train", "0", "--calib-train-subset", "5")
    assert d.threshold_share == 0.4 and _profiles_config("--threshold-share", "0.5").threshold_share == 0.5
    with pytest.raises(ValueError, match="threshold share"):  # nothing left to set the threshold on
        _profiles_config("--threshold-share", "0")
    with pytest.raises(SystemExit):  # argparse: a rate below 1
        _profiles_config("--threshold-share", "1")
    shipped = load_profiles(Path(__file__).parents[1] / "models" / "resnet20-decoupled").meta["calibration"]
    assert shipped["attacks"] == a.calib_attacks.split(",") and shipped["extra_fit_images"] == a.calib_train
    assert shipped["extra_subset_images"] == d.train_subset
    assert shipped["extra_attacks"] == ["fgsm", "pgd", "transfer"] and shipped["extra_subset_attacks"] == [
        "cw",
        "deepfool",
    ]
    assert shipped["families"] == [["fgsm", "pgd", "transfer"], ["cw", "deepfool"]]
    assert shipped["transfer_source"] == "models/resnet20-dense"
    assert shipped["family_log_prior"] == list(d.family_log_prior) == [0.0, 0.0]
    assert shipped["config"]["residual"] and shipped["features"]["families"] == ["path", "consistency", "residual"]


def test_transferred_attacks_run_only_with_a_source() -> None:
    from detector.calibration import CalibrationConfig

    d = CalibrationConfig()
    assert "transfer" not in d.attacks_run() and "transfer" in d.attacks
    assert replace(d, source="some/dense").attacks_run() == ["fgsm", "pgd", "cw", "deepfool", "transfer"]
    with pytest.raises(ValueError, match="--source 'nowhere': expected a model bundle"):
        _profiles_config("--source", "nowhere")


def test_profiles_fit_transferred_pgd_crafted_on_the_source(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """--source: the fit's transferred PGD is crafted on the dense bundle at the fit's radii, joins its family's tree
    model, and the record names it and its source."""
    import shutil

    other = tmp_path / "with-transfer"
    shutil.copytree(tiny_bundle, other)
    dense = str(tiny_bundle.parent / "dense")
    flags = ["--calib-attacks", "fgsm,pgd,transfer", "--calib-train-subset", "0", "--tree-iterations", "30"]
    assert main(["profiles", "--model", str(other), "--data", str(tiny_data), *flags, "--source", dense]) == 0
    c = load_profiles(other).meta["calibration"]
    assert c["attacks"] == ["fgsm", "pgd", "transfer"] and c["transfer_source"] == dense
    assert 0 <= c["attack_success_rates"]["transfer"] <= 1
    if c["attack_success_rates"]["transfer"] > 0:  # the default layout: in the FGSM + PGD model
        assert ["fgsm", "pgd", "transfer"] in c["families"]
    # without a source the same command fits no transferred attack, and the record says so
    assert main(["profiles", "--model", str(other), "--data", str(tiny_data), *flags]) == 0
    c = load_profiles(other).meta["calibration"]
    assert c["attacks"] == ["fgsm", "pgd"] and "transfer_source" not in c


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


def test_profiles_without_gate_logits_still_score(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """--without-gate-logits: the scorer reads z only, and the detector serves it."""
    import shutil

    other = tmp_path / "z-only"
    shutil.copytree(tiny_bundle, other)
    assert main(["profiles", "--model", str(other), "--data", str(tiny_data), "--without-gate-logits", *CHEAP]) == 0
    p, q = load_profiles(other), load_profiles(tiny_bundle)
    assert p.gate_mean is None and q.gate_mean is not None
    widths, extra = [f.shape[1] for f in p.freq], p.spec.extra_columns(len(p.freq))
    assert p.spec == q.spec and extra > 0  # the default recipe's consistency columns
    assert p.scorer.mean.numel() == feature_count(widths) + extra
    assert q.scorer.mean.numel() == feature_count(widths, True) + extra
    det = load_detector(other)
    x = torch.rand(9, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b = det.predict(x), det.predict(x, batch_size=4)
    assert torch.equal(a.labels, load_detector(tiny_bundle).predict(x).labels)
    # batches of other sizes round differently (~1e-6): a gate logit that close to 0 may flip its filter, and the
    # score with it; every other image scores the same
    same = torch.stack([(p == q).all(1) for p, q in zip(a.paths, b.paths)]).all(0)
    near_zero = torch.stack([s.abs().amin(1) < 1e-4 for s in a.gate_logits]).any(0)
    assert bool((same | near_zero).all()) and torch.allclose(a.scores[same], b.scores[same], atol=1e-5)


def test_interrupted_regenerate_leaves_old_profiles(
    tiny_bundle: Path, tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import detector.profiles as prof

    before = (tiny_bundle / PROFILES).read_bytes()

    def crash(tensors, path, metadata=None):  # writes half a file, then dies
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(prof, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        main(["profiles", "--model", str(tiny_bundle), "--data", str(tiny_data), "--calib-limit", "0", *CHEAP])
    assert (tiny_bundle / PROFILES).read_bytes() == before
    load_detector(tiny_bundle)  # still loads
    for tmp in tiny_bundle.glob(f".{PROFILES}.tmp*"):
        tmp.unlink()
    shutil.rmtree(tiny_bundle / "checkpoint" / "profiles")  # the crashed run's attacks, kept for a resume


def test_the_fits_linf_attacks_run_at_the_generic_radii_and_others_at_their_budget(tiny_bundle: Path) -> None:
    """fit_attack splits the images among CalibrationConfig.linf_eps for the attacks marked fit_radii (FGSM, PGD,
    transferred PGD), each image within its own radius; any other attack runs at its ATTACKS budget."""
    from detector.attacks import ATTACKS
    from detector.calibration import CalibrationConfig, fit_attack

    assert {n for n, s in ATTACKS.items() if s.fit_radii} == {"fgsm", "pgd", "transfer"}
    model = load_detector(tiny_bundle).model
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)  # every image correctly classified, so an attack may succeed on each
    cfg = CalibrationConfig(linf_eps=(1.0, 16.0))
    part = torch.randperm(16, generator=torch.Generator().manual_seed(cfg.seed)) % 2  # fit_attack's seeded split
    for name in ("fgsm", "pgd"):
        adv, success = fit_attack(model, name, x, y, cfg, "cpu")
        moved = (adv - x[success]).abs().flatten(1).amax(1)
        radius = torch.tensor(cfg.linf_eps)[part[success]] / 255
        assert len(adv) == int(success.sum()) and (moved <= radius + 1e-6).all(), name
        assert (moved > 1.5 / 255).any(), f"{name}: no image used the 16/255 radius"
    adv, success = fit_attack(model, "pgdl2", x, y, cfg, "cpu")  # L2 0.5: not swept
    assert ((adv - x[success]).flatten(1).norm(dim=1) <= ATTACKS["pgdl2"].params["eps"] + 1e-4).all()


def test_an_interrupted_profiles_run_resumes_without_attacking_again(
    tiny_bundle: Path, tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fit's attacks are most of `dnd profiles`' time: they are kept under BUNDLE/checkpoint/profiles until the
    profiles are written, so a re-run after a crash scores the kept images, and a finished bundle keeps nothing."""
    import shutil

    import detector.calibration as cal

    b = shutil.copytree(tiny_bundle, tmp_path / "dec")
    shutil.rmtree(b / "checkpoint" / "profiles", ignore_errors=True)  # no earlier run's attacks to resume from
    args = ["profiles", "--model", str(b), "--data", str(tiny_data), *CHEAP]
    calls = []
    attack = cal.fit_attack

    def counted(*a, **k):
        calls.append(a[1])
        return attack(*a, **k)

    def crash(*a, **k):  # dies after every attack ran, before the threshold
        raise KeyboardInterrupt

    monkeypatch.setattr(cal, "fit_attack", counted)
    with monkeypatch.context() as m:
        m.setattr(cal, "calibrate_threshold", crash)
        with pytest.raises(KeyboardInterrupt):
            main(args)
    ran = len(calls)
    assert ran > 0 and set(calls) == {"fgsm", "pgd"} and list((b / "checkpoint" / "profiles").iterdir())
    assert main(args) == 0
    assert len(calls) == ran and not (b / "checkpoint" / "profiles").exists()  # resumed: no attack ran again
    resumed = load_profiles(b).meta
    assert main(args) == 0  # from scratch: the same recipe attacks again and fits the same scorer
    assert len(calls) == 2 * ran and load_profiles(b).meta["threshold"] == resumed["threshold"]


def _make_profile_targets() -> dict[str, list[str]]:
    """Each Makefile line `$(call profile,models/B) FLAGS` as {B: FLAGS}, make variables and line continuations
    expanded."""
    import re
    import shlex

    text = (Path(__file__).parents[1] / "Makefile").read_text().replace("\\\n", " ")
    variables = dict(re.findall(r"^([A-Z0-9_]+) := (.*)$", text, re.M))
    expand = lambda s: re.sub(r"\$\(([A-Z0-9_]+)\)", lambda m: variables[m.group(1)], s)  # noqa: E731
    return {b: shlex.split(expand(f)) for b, f in re.findall(r"\$\(call profile,models/([\w-]+)\)(.*)$", text, re.M)}


def test_each_make_profiles_target_rebuilds_its_shipped_recipe() -> None:
    """`make profiles`, `make profiles-robust`, `make profiles-resnet56` and `make profiles-vgg` give, with today's
    defaults, the recipe recorded in the profiles each ships: a default changed without a rebuild, or a flag left out,
    fails here."""
    from detector.calibration import CalibrationConfig
    from dnd.cli import build_parser
    from dnd.commands.profiles import calibration_config

    targets = _make_profile_targets()
    assert set(targets) == {"resnet20-decoupled", "resnet20-decoupled-robust", "resnet56-decoupled", "vgg19-decoupled"}
    for bundle, flags in targets.items():
        a = build_parser().parse_args(["profiles", "--model", "m", "--data", "d", *flags])
        shipped = load_profiles(Path(__file__).parents[1] / "models" / bundle).meta["calibration"]
        assert calibration_config(a) == CalibrationConfig.from_record(shipped), bundle


def test_a_shift_limit_raises_the_threshold_until_no_weighed_corruption_is_flagged_more(
    tiny_bundle: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """Every profile records how many of its threshold images it flags under each weighed corruption (the held-out
    shifts never); `--max-shift-flagged` raises the threshold until each share is within the limit."""
    from detector.corruptions import SELECTION_CORRUPTIONS
    from detector.shift_threshold import shift_bounded_threshold

    before = load_profiles(tiny_bundle).meta
    assert set(before["calibration"]["threshold_shift_flagged"]) == set(SELECTION_CORRUPTIONS)
    assert before["calibration"]["threshold_bound_by"] == "clean"
    b = shutil.copytree(tiny_bundle, tmp_path / "dec")
    assert main(["profiles", "--model", str(b), "--data", str(tiny_data), "--max-shift-flagged", "0.1", *CHEAP]) == 0
    after = load_profiles(b).meta
    shares = after["calibration"]["threshold_shift_flagged"]
    assert all(v <= 0.1 for v in shares.values()) and after["threshold"] >= before["threshold"]
    assert after["calibration"]["fpr_achieved"] <= before["calibration"]["fpr_achieved"]
    if after["calibration"]["threshold_bound_by"] != "clean":  # the limit bound: some share sits just at or under it
        assert after["threshold"] > before["threshold"]
    g = torch.Generator().manual_seed(0)
    clean, noisy = torch.randn(1000, generator=g), torch.randn(1000, generator=g) + 1.0
    t, by = shift_bounded_threshold(clean, {"gaussian_noise": noisy}, 0.05, 0.1)
    assert by == "gaussian_noise" and int((noisy > t).sum()) <= 100 < int((noisy > t - 0.05).sum())  # just within
    assert int((clean > t).sum()) < 50
    assert shift_bounded_threshold(clean, {"gaussian_noise": noisy}, 0.05, 0.0)[1] == "clean"


def test_validation_attacks_are_measured_on_the_threshold_images_and_never_move_the_threshold(
    tiny_bundle: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """`--validation-attacks`: run on the threshold part after the fit, recorded with AUROC and share flagged; the
    scorer and the threshold are those of the same recipe without them; `dnd evaluate` refuses them as unseen."""
    from detector.evaluation.protocol import check_unseen

    b = shutil.copytree(tiny_bundle, tmp_path / "dec")
    assert main(["profiles", "--model", str(b), "--data", str(tiny_data), "--validation-attacks", "pgd", *CHEAP]) == 0
    before, after = load_profiles(tiny_bundle).meta, load_profiles(b).meta
    assert after["threshold"] == before["threshold"] and "validation" not in before["calibration"]
    v = after["calibration"]["validation"]["pgd"]
    assert after["calibration"]["validation_attacks"] == ["pgd"]
    assert v["offered"] == after["calibration"]["n_threshold_clean"] and 0 < v["n"] <= v["offered"]
    assert 0 <= v["auroc"] <= 1 and 0 <= v["flagged"] <= 1
    with pytest.raises(ValueError, match="informed a recipe choice"):
        check_unseen(("square",), {**after["calibration"], "validation_attacks": ["square"]}, ())
    check_unseen(("square",), after["calibration"], ())  # not validated on: still unseen
    # a transferred attack needs the network it is crafted on
    assert main(["profiles", "--model", str(b), "--data", str(tiny_data), "--validation-attacks", "transfer"]) != 0
