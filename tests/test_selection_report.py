"""The selection report's summary for the docs (detector/evaluation/selection_report.py): what each family adds."""

from detector.evaluation.selection_report import features_name, selection_summary


def _row(transforms, confidence, residual, worst, shift=0.05, l2=0.5):
    cell = {"auroc": worst, "flagged": 0.5}
    return {
        "transforms": transforms,
        "confidence": confidence,
        "residual": residual,
        "attacks": {"fgsm": cell, "pgdl2": {"auroc": l2, "flagged": 0.25}},
        "worst_auroc": worst,
        "shift_flagged": {"gaussian_noise": shift, "saturate": shift / 2},
        "worst_shift_flagged": shift,
    }


def test_summary_puts_the_chosen_beside_the_best_eligible_without_each_family() -> None:
    r = {
        "config": {"selection_attacks": ["pgdl2"], "max_transforms": 2, "max_shift_flagged": 0.15},
        "candidates": [
            _row([], False, False, 0.74),
            _row(["median"], False, True, 0.88),
            _row(["median", "shift"], False, False, 0.89),
            _row(["jpeg"], True, False, 0.99, shift=1.0),  # best of all, but flags every noisy clean image
            _row(["median", "shift", "flip"], False, False, 0.95),  # over the transform limit
            _row([], False, True, 0.85, l2=0.7),
            _row(["median", "shift"], False, True, 0.91),
        ],
        "chosen": {"transforms": ["median", "shift"], "confidence": False, "residual": True},
        "family_layouts": [
            {"families": [["fgsm", "pgd"], ["transfer"]], "worst_selection_auroc": 0.92},
            {"families": [["fgsm", "pgd", "transfer"]], "worst_selection_auroc": 0.93},
        ],
        "chosen_layout": [["fgsm", "pgd", "transfer"]],
    }
    lines = selection_summary(r).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| |")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| chosen",
        "| best without residual",
        "| best without consistency",
        "| path features alone",
    ]
    assert "path + median, shift + residual" in rows[0] and "0.910" in rows[0]
    assert "path + median, shift |" in rows[1] and "0.890" in rows[1]  # not the jpeg or three-transform rows
    assert "path + residual" in rows[2] and "0.700 / 25%" in rows[2] and "| path |" in rows[3]
    assert lines[-1].endswith("fgsm+pgd+transfer 0.930 (chosen); fgsm+pgd | transfer 0.920.")
    r["augmentations"] = [
        {"kinds": ["noise", "blur"], **_row([], False, False, 0.91, shift=0.08)},
        {"kinds": ["noise", "blur", "hue"], **_row([], False, False, 0.90, shift=0.12)},
    ]
    r["chosen_augmentation"] = ["noise", "blur"]
    last = selection_summary(r).splitlines()[-1]
    assert last.endswith("noise, blur 0.910 (8% gaussian_noise) (chosen); noise, blur, hue 0.900 (12% gaussian_noise).")


def test_no_chosen_candidate_says_so_and_names_read_plainly() -> None:
    r = {"config": {"selection_attacks": []}, "candidates": [_row([], False, False, 0.7)], "chosen": None}
    assert "no candidate" in selection_summary(r)
    assert features_name(_row(["median"], True, True, 0.9)) == "path + median + confidence + residual"
