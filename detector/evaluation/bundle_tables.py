"""Tables of what each shipped bundle and its profiles record, in Markdown (`make docs`): the bundles' accuracy and
FLOPs (metrics.json), what each served score reads and what its calibration measured on the calibration half (the
profiles' calibration record). The evaluation reports' tables are in summary.py."""

from __future__ import annotations

from typing import Any

from ..scorer import wilson_interval
from .summary import rate_interval


def bundles_table(metrics: dict[str, dict[str, Any]]) -> str:
    """Per bundle: test accuracy, PGD-10 accuracy, mean FLOPs against the dense network, and dynamic filters."""
    head = ["bundle", "test accuracy", "PGD-10 8/255 accuracy", "FLOPs vs dense", "dynamic filters"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in metrics.items():
        fs = m["filter_states"]
        robust = m.get("test_robust_accuracy")
        lines.append(
            f"| `{name}` | {100 * m['test_accuracy']:.2f}% | "
            + (f"{100 * robust:.1f}%" if robust is not None else "—")
            + f" | {m['flops_ratio']:.3f} | "
            + (f"{fs['dynamic']} of {fs['total']}" if m.get("decoupled") else "—")
            + " |"
        )
    return "\n".join(lines)


def score_reads_table(calibrations: dict[str, tuple[dict[str, Any], int, str]]) -> str:
    """Per bundle, from its profiles: the feature families its served score reads, the consistency transforms, the
    precision its transformed copies run in, and how many features in all. Values: (calibration record, feature
    count, copies' precision)."""
    head = ["bundle", "the served score reads", "consistency transforms", "copies run in", "features"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, (cal, n, precision) in calibrations.items():
        f = cal.get("features") or {"families": ["path"], "transforms": {}}
        transforms = ", ".join(f["transforms"].values())
        lines.append(
            f"| `{name}` | {', '.join(f['families'])} | {transforms or '—'} | {precision if transforms else '—'} "
            f"| {n:,} |"
        )
    return "\n".join(lines)


def calibration_record_table(calibrations: dict[str, dict[str, Any]]) -> str:
    """Per bundle, what its profiles measured on the calibration half once scorer and threshold were set: the share
    of the threshold part's clean images flagged, with its 95% Wilson interval (how far the served rate may fall from
    it on unseen images), each validation attack's AUROC and share flagged (detector/validation.py), and the share of
    those clean images flagged under the worst weighed corruption (detector/shift_threshold.py). Values: calibration
    records; profiles written before a measurement show a dash."""
    head = [
        "bundle",
        "clean threshold images flagged [95%]",
        "validation attacks: AUROC / flagged (n)",
        "threshold images flagged under the worst corruption",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cal in calibrations.items():
        val = cal.get("validation") or {}
        cells = [f"{a} {v['auroc']:.3f} / {100 * v['flagged']:.1f}% ({v['n']:,})" for a, v in val.items() if v["n"]]
        shifted = cal.get("threshold_shift_flagged") or {}
        worst = max(shifted, key=shifted.get) if shifted else None
        lines.append(
            f"| `{name}` | {_threshold_rate(cal)} | {'; '.join(cells) or '—'} | "
            + (f"{100 * shifted[worst]:.1f}% ({worst}{_bound(cal)})" if worst else "—")
            + " |"
        )
    return "\n".join(lines)


def _threshold_rate(cal: dict[str, Any]) -> str:
    n, fpr = cal.get("n_threshold_clean"), cal.get("fpr_achieved")
    if not n or fpr is None:
        return "—"
    return f"{rate_interval(fpr, list(wilson_interval(round(fpr * n), n)))} of {n:,}"


def _bound(cal: dict[str, Any]) -> str:
    by = cal.get("threshold_bound_by", "clean")
    return "" if by == "clean" else f"; the threshold raised to bound {by}"
