"""`dnd evaluate` (detector/evaluation/): the protocol end to end on the tiny trained bundle."""

import json
from pathlib import Path

import torch

from dnd.cli import main


def evaluate_args(bundle: Path, data: Path, *flags: str) -> list[str]:
    """A `dnd evaluate` command line on the tiny bundle and its data."""
    return ["evaluate", "--model", str(bundle), "--data", str(data), *flags]


def test_evaluate_smoke_writes_report(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """The whole protocol on the tiny bundle: known, leave-one-out, used in selection (incl. a transfer from the dense
    bundle), unseen, corruptions, every detector with intervals, adaptive; a re-run reuses the saved attack sets."""
    out = tmp_path / "report"
    args = evaluate_args(
        tiny_bundle,
        tiny_data,
        "--attacks",
        "fgsm,pgd,cw",
        "--selection",
        "pgdl2,transfer",
        "--unseen",
        f"eadl1,transfer-ti@{tiny_bundle}",  # crafted on a bundle of its own, not on --source
        "--source",
        str(tiny_bundle.parent / "dense"),
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
        "--lee-limit",
        "20",
        "--bootstrap",
        "20",
        "--out",
        str(out),
    )
    assert main(args) == 0
    from detector.evaluation import DETECTORS

    r = json.loads((out / "report.json").read_text())
    ti = f"transfer-ti@{tiny_bundle}"
    assert list(r["attacks"]) == ["fgsm", "pgd", "cw", "pgdl2", "transfer", "eadl1", ti]
    assert r["attacks"]["transfer"]["what"].endswith(f"(crafted on {tiny_bundle.parent / 'dense'})")
    assert r["attacks"][ti]["what"].endswith(f"(crafted on {tiny_bundle})")
    from detector.attacks import file_stem, load_attack_set
    from detector.bundle import WEIGHTS, file_sha256

    kept = load_attack_set(out / "attacks" / f"{file_stem(ti)}.safetensors")  # one file, keyed by its own source
    assert kept.meta["source"] == file_sha256(tiny_bundle / WEIGHTS)
    assert 0 <= r["clean_accuracy"] <= 1
    assert [a["role"] for a in r["attacks"].values()] == ["known"] * 3 + ["selection"] * 2 + ["unseen"] * 2
    for name, a in r["attacks"].items():
        assert {"success_rate", "n_adv", "detectors", "what", "params"} <= set(a)
        assert set(a["detectors"]) == set(DETECTORS)
        for d in a["detectors"].values():
            if a["n_adv"]:
                assert 0 <= d["auroc"] <= 1 and d["auroc_ci"][0] <= d["auroc"] <= d["auroc_ci"][1]
            else:
                assert d["auroc"] is None
        if name in ("fgsm", "pgd", "transfer", ti):
            assert a["linf_max"] <= 8 / 255 + 1e-6
        if a["n_adv"] > 1:  # the Lee-faithful upper bound, fitted on this attack, two-fold
            lee = a["lee_upper_bound"]
            assert lee["n_neg"] <= 20 and lee["n_pos"] <= 20 and len(lee["eps_chosen"]) == 2
            assert lee["auroc_ci"][0] <= lee["auroc"] <= lee["auroc_ci"][1] and 0 <= lee["tpr_at_threshold"] <= 1
    assert r["attacks"]["cw"]["images_attacked"] <= 10
    # each known attack that succeeded on the refit images is left out once (on this tiny network CW may never
    # succeed: then it has n_adv 0, no AUROC, no leave-one-out, and the report says so rather than crashing)
    assert set(r["leave_one_out"]) == {a for a, n in r["refit_attacked"].items() if n} >= {"fgsm", "pgd"}
    assert set(r["leave_one_out"]["pgd"]) == {"path_refit", "maha_mix", "lid"}
    assert (
        set(r["corruptions"]) == {"gaussian_noise", "pixelate"}
        and not r["corruptions"]["pixelate"]["in_fit_augmentation"]
    )
    assert set(r["summary"]) == set(DETECTORS) and r["fitted_on"].startswith("clean images against")
    # the default --limit covers the whole evaluation half: the served threshold's figure is the table's own
    assert r["served_clean_fpr"] == r["clean_fpr"]["path"] | {"images": r["evaluation_images"]}
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
    md = (out / "report.md").read_text()
    assert md.startswith("# Detection report") and "## What each family adds" in md
    assert "## Against a Lee-faithful Mahalanobis upper bound" in md
    assert "## Attacks used in selection" in md and "## Unseen attacks (in no fit and no choice)" in md
    assert all((out / f).stat().st_size > 0 for f in ("roc.png", "generalisation.png", "corruptions.png"))
    saved = out / "attacks" / "pgd.safetensors"
    assert saved.is_file()
    stamp = saved.stat().st_mtime_ns
    assert main(args) == 0 and saved.stat().st_mtime_ns == stamp  # reused, not recomputed


def test_evaluate_with_known_attacks_only(tiny_bundle: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    # `--unseen ''` and `--corruptions ''` are offered as "none": the unsupervised detectors then have no held-out
    # figure at all (no leave-one-out refit either), which the summary, report and console line must say, not crash on
    out = tmp_path / "report"
    args = evaluate_args(tiny_bundle, tiny_data, "--attacks", "fgsm,pgd", "--selection", "", "--unseen", "")
    args += ["--corruptions", "", "--adaptive-limit", "0", "--bootstrap", "20", "--out", str(out)]
    assert main(args) == 0
    r = json.loads((out / "report.json").read_text())
    assert list(r["attacks"]) == ["fgsm", "pgd"] and r["corruptions"] == {}
    assert r["summary"]["msp"]["worst_held_out_or_unseen"] is None  # the served `path` is not refitted either
    assert r["summary"]["path_refit"]["worst_held_out_or_unseen_on"].startswith("without ")
    assert "held-out, selection or unseen AUROC: none evaluated" in capsys.readouterr().out
    assert "| —" in (out / "report.md").read_text()


def test_unknown_attack_name_is_a_clear_cli_error(tiny_bundle: Path, tiny_data: Path, tmp_path: Path, capsys) -> None:
    assert main(evaluate_args(tiny_bundle, tiny_data, "--attacks", "pgd,foo", "--out", str(tmp_path))) == 2
    assert "unknown attack" in capsys.readouterr().err


def test_an_unseen_attack_in_the_fit_record_is_refused_before_any_attack(
    tiny_bundle: Path, tiny_data: Path, tmp_path: Path, capsys
) -> None:
    # the tiny bundle's scorer was fitted on fgsm and pgd: neither may be reported as unseen
    args = evaluate_args(tiny_bundle, tiny_data, "--attacks", "fgsm")
    assert main([*args, "--unseen", "pgd,pgdl2", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "pgd are in the served scorer's fit" in err and not (tmp_path / "r" / "attacks").exists()
    # an attack whose calibration figures chose the recipe (the record's selection_attacks) is no unseen attack either
    assert main([*args, "--unseen", "pgdl2", "--out", str(tmp_path / "s")]) == 2
    assert "pgdl2 informed a recipe choice" in capsys.readouterr().err


def test_an_attack_crafted_on_another_network_is_no_unseen_method() -> None:
    """NAME@SOURCE compares by its method: transfer-ti crafted on another network is still transfer-ti."""
    import pytest

    from detector.evaluation.protocol import check_unseen

    with pytest.raises(ValueError, match="in the served scorer's fit"):
        check_unseen(("transfer-ti@models/vgg19-dense",), {"attacks": ["fgsm", "transfer-ti"]})
    with pytest.raises(ValueError, match="informed a recipe choice"):
        check_unseen(("transfer-mi@models/vgg19-dense",), {"attacks": ["fgsm"]}, selection=("transfer-mi",))
    check_unseen(("transfer-ti@models/vgg19-dense",), {"attacks": ["fgsm", "transfer"]})  # another method: unseen


def test_select_ranks_candidates_on_the_calibration_half(tiny_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """`dnd select`: every candidate gets a row with per-attack AUROC and shift flag rates, the calibration's
    selection attacks included (a transfer from the dense bundle), over the weighed corruptions only; the chosen
    candidate, layout and clean augmentation each have the best worst case among those within the limits. Its attacks
    are kept under OUT/attacks for a re-run."""
    from detector.calibration import CalibrationConfig
    from detector.corruptions import SELECTION_CORRUPTIONS
    from detector.evaluation.selection import AUGMENTATIONS, CANDIDATES, FAMILY_LAYOUTS

    out, limit = tmp_path / "sel", 0.5
    args = ["select", "--model", str(tiny_bundle), "--data", str(tiny_data), "--out", str(out)]
    args += ["--source", str(tiny_bundle.parent / "dense"), "--max-shift-flagged", str(limit)]
    assert main([*args, "--images", "60", "--tree-iterations", "5"]) == 0
    r = json.loads((out / "report.json").read_text())
    assert len(r["candidates"]) == len(CANDIDATES) and {"pgdl2", "transfer-mi", "transfer"} <= set(r["attacks"])
    assert {c["residual"] for c in r["candidates"]} == {True, False}  # the input residual is a candidate family
    assert set(r["still_correct_under_corruption"]) == set(SELECTION_CORRUPTIONS)  # held-out shifts never weighed
    succeeded = {a for a, n in r["attacks"].items() if n}  # on the tiny network some attacks never succeed
    ok = [c for c in r["candidates"] if len(c["transforms"]) <= 2 and c["worst_shift_flagged"] <= limit]
    for c in r["candidates"]:
        assert set(c["attacks"]) == succeeded and all(0 <= v["auroc"] <= 1 for v in c["attacks"].values())
        assert c["worst_auroc"] == min(v["auroc"] for v in c["attacks"].values())
        assert set(c["shift_flagged"]) <= set(SELECTION_CORRUPTIONS)
    assert ok, "a limit of 50% lets some candidate through on the tiny network"
    best = max(ok, key=lambda c: c["worst_auroc"])
    assert r["chosen"] == {k: best[k] for k in ("transforms", "confidence", "residual")}
    # the chosen features under each layout of the fit's families, judged on the selection attacks alone
    assert [row["families"] for row in r["family_layouts"]] == [list(map(list, f)) for f in FAMILY_LAYOUTS]
    for row in r["family_layouts"]:
        held = [row["attacks"][a]["auroc"] for a in ("pgdl2", "transfer-mi") if a in row["attacks"]]
        assert not held or row["worst_selection_auroc"] == min(held)
    fits = [row for row in r["family_layouts"] if row["worst_shift_flagged"] <= limit]
    assert fits and r["chosen_layout"] == max(fits, key=lambda row: row["worst_selection_auroc"])["families"]
    # then each clean augmentation under the chosen features and layout, by the worst AUROC over every attack
    assert [row["kinds"] for row in r["augmentations"]] == [list(k) for k in AUGMENTATIONS]
    assert AUGMENTATIONS[0] == CalibrationConfig().clean_augment  # candidates compared under the served one
    within = [row for row in r["augmentations"] if row["worst_shift_flagged"] <= limit]
    assert r["chosen_augmentation"] == (max(within, key=lambda row: row["worst_auroc"])["kinds"] if within else None)
    assert r["families"] == [list(f) for f in FAMILY_LAYOUTS[0]]  # the layout the candidates are compared under
    cached = sorted(p.name for p in (out / "attacks").iterdir())
    assert cached == sorted(f"{a}.safetensors" for a in r["attacks"])
    assert (out / "report.md").read_text().startswith("# Feature selection")


def test_the_served_threshold_is_measured_on_the_whole_evaluation_half(tiny_bundle: Path, tiny_data: Path) -> None:
    """Where --limit attacks part of the evaluation half, the served threshold's clean figure still reads all of it:
    the images already predicted and the rest, as one prediction of the whole half would."""
    from detector import load_detector
    from detector.data import load_split, to_unit_float
    from detector.evaluation.protocol import served_clean_fpr
    from detector.evaluation.report import whole_half
    from detector.evaluation.rocs import flag_rate

    det = load_detector(tiny_bundle, threshold=-1e9)  # every image flagged: the figure counts correct ones only
    test = load_split(tiny_data, "test")
    half = torch.arange(len(test.y))
    subset = half[::3]
    fig = served_clean_fpr(det, test, half, subset, det.predict(to_unit_float(test.x[subset])), 20)
    whole = det.predict(to_unit_float(test.x))
    ok = whole.labels == test.y
    assert ok.sum() >= 2, "the tiny bundle classifies a few test images right"
    assert fig["images"] == len(half) and fig["n"] == int(ok.sum()) and fig["rate"] == 1.0
    det.threshold = float(whole.scores[ok].median())
    fig = served_clean_fpr(det, test, half, subset, det.predict(to_unit_float(test.x[subset])), 20)
    assert fig["rate"] == flag_rate(whole.scores[ok], det.threshold, 20)["rate"]
    r = {"served_clean_fpr": fig, "evaluation_images": len(subset)}
    assert whole_half(r).startswith(f"; on all {len(half)} images of the evaluation half ({fig['n']} correctly")
    assert whole_half(r | {"evaluation_images": len(half)}) == ""  # the table's own images: nothing to add
