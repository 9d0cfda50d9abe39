"""The selection report in Markdown (`dnd select`'s OUT/report.md) and its summary for the docs (`make docs`): which
feature families and which tree-model layout the calibration half chose, and what each family adds there."""

from __future__ import annotations

from typing import Any


def _cell(row: dict[str, Any], attack: str) -> str:
    v = row["attacks"].get(attack)
    return "n/a" if v is None else f"{v['auroc']:.3f} / {100 * v['flagged']:.0f}%"


def render(r: dict[str, Any]) -> str:
    c = r["config"]
    names = list(r["attacks"])
    lines = [
        f"# Feature selection: {r['model']}",
        "",
        f"{r['images']} correctly classified images of the calibration half's fit part, two-fold cross-fitted; "
        f"attacks {', '.join(f'{a} ({n} adversarial)' for a, n in r['attacks'].items())}. Cells: AUROC / share "
        "flagged at a threshold flagging 5% of held-out clean images. Chosen: the best worst-case AUROC among "
        f"candidates with at most {c['max_transforms']} transforms that flag at most "
        f"{100 * c['max_shift_flagged']:.0f}% of any corruption's clean images. Families: "
        f"{' | '.join('+'.join(f) for f in r.get('families', []))} (one tree model each).",
        "",
        "| transforms | confidence | residual | "
        + " | ".join(names)
        + " | worst AUROC | most shifted images flagged |",
        "|---|---|---|" + "---|" * len(names) + "---|---|",
    ]
    for row in r["candidates"]:
        cells = [_cell(row, a) for a in names]
        worst_shift = max(row["shift_flagged"], key=row["shift_flagged"].get)
        residual = row.get("residual", False)  # reports written before the residual family read none
        key = {"transforms": row["transforms"], "confidence": row["confidence"], "residual": residual}
        chosen = r["chosen"] is not None and {"residual": False, **r["chosen"]} == key
        name = ", ".join(row["transforms"]) or "none"
        lines.append(
            f"| {'**' + name + '**' if chosen else name} | {'yes' if row['confidence'] else 'no'} | "
            f"{'yes' if residual else 'no'} | "
            + " | ".join(cells)
            + f" | {row['worst_auroc']:.3f} | {100 * row['worst_shift_flagged']:.0f}% ({worst_shift}) |"
        )
    if r.get("family_layouts"):
        sel = ", ".join(c["selection_attacks"])
        lines += [
            "",
            "## Which attacks share a tree model",
            "",
            f"The chosen features under each layout of the fit's attacks (`|` between tree models; an attack in no "
            f"layout's family is in no fit), judged by the worst AUROC over the selection attacks ({sel}), which no "
            "layout fits.",
            "",
            "| families | " + " | ".join(names) + " | worst selection AUROC | most shifted images flagged |",
            "|---|" + "---|" * len(names) + "---|---|",
        ]
        for row in r["family_layouts"]:
            cells = [_cell(row, a) for a in names]
            name = " \\| ".join("+".join(f) for f in row["families"])
            bold = row["families"] == r["chosen_layout"]
            lines.append(
                f"| {'**' + name + '**' if bold else name} | "
                + " | ".join(cells)
                + f" | {row['worst_selection_auroc']:.3f} | {100 * row['worst_shift_flagged']:.0f}% |"
            )
    if r.get("augmentations"):
        shifts = list(r["augmentations"][0]["shift_flagged"])
        lines += [
            "",
            "## What the clean negatives are shown under",
            "",
            "The chosen features and layout, with the clean images of the fit also under one random change of these "
            "kinds each (detector/corruptions.py AUGMENT). Chosen: the best worst AUROC among the sets that flag at "
            f"most {100 * c['max_shift_flagged']:.0f}% of any corruption's clean images. Cells: AUROC / share flagged; "
            "shifted images: share flagged.",
            "",
            "| kinds | " + " | ".join(names) + " | worst AUROC | " + " | ".join(shifts) + " |",
            "|---|" + "---|" * len(names) + "---|" + "---|" * len(shifts),
        ]
        for row in r["augmentations"]:
            name = ", ".join(row["kinds"])
            bold = row["kinds"] == r.get("chosen_augmentation")
            lines.append(
                f"| {'**' + name + '**' if bold else name} | "
                + " | ".join(_cell(row, a) for a in names)
                + f" | {row['worst_auroc']:.3f} | "
                + " | ".join(f"{100 * row['shift_flagged'].get(k, float('nan')):.0f}%" for k in shifts)
                + " |"
            )
    lines += ["", "Regenerate: `make select`.", ""]
    return "\n".join(lines)


def features_name(row: dict[str, Any]) -> str:
    """A candidate's features in words: "path", then "+ median, shift", "+ confidence", "+ residual"."""
    parts = ["path"] + ([", ".join(row["transforms"])] if row["transforms"] else [])
    return " + ".join(parts + [f for f in ("confidence", "residual") if row.get(f, False)])


def _is(row: dict[str, Any], key: dict[str, Any] | None) -> bool:
    return key is not None and {"residual": False, **key} == {
        "transforms": row["transforms"],
        "confidence": row["confidence"],
        "residual": row.get("residual", False),
    }


def selection_summary(r: dict[str, Any]) -> str:
    """The chosen candidate beside the best one without each of its families, and the path features alone: what
    each family adds on the calibration half, the selection attacks' cells, the worst AUROC and the worst corruption."""
    chosen = next((row for row in r["candidates"] if _is(row, r["chosen"])), None)
    if chosen is None:
        return "(no candidate met the selection's corruption limit)"
    rows = [("chosen", chosen)]
    drops = {
        "residual": lambda row: row.get("residual", False),
        "consistency": lambda row: bool(row["transforms"]),
        "confidence": lambda row: row["confidence"],
    }
    for family, has in drops.items():
        if has(chosen):
            rest = [row for row in r["candidates"] if not has(row) and _eligible(r, row)]
            if rest:
                rows.append((f"best without {family}", max(rest, key=lambda row: row["worst_auroc"])))
    alone = [row for row in r["candidates"] if _is(row, {"transforms": [], "confidence": False})]
    rows += [("path features alone", alone[0])] if alone else []
    sel = list(r["config"]["selection_attacks"])
    lines = [
        "| | features | " + " | ".join(sel) + " | worst AUROC, every attack | most shifted images flagged |",
        "|---|---|" + "---|" * len(sel) + "---|---|",
    ]
    for what, row in rows:
        worst_shift = max(row["shift_flagged"], key=row["shift_flagged"].get)
        lines.append(
            f"| {what} | {features_name(row)} | "
            + " | ".join(_cell(row, a) for a in sel)
            + f" | {row['worst_auroc']:.3f} | {100 * row['worst_shift_flagged']:.0f}% ({worst_shift}) |"
        )
    if r.get("family_layouts"):
        layouts = sorted(r["family_layouts"], key=lambda row: -row["worst_selection_auroc"])
        lines += [
            "",
            "Tree-model layouts for the chosen features, by the worst AUROC over "
            + ", ".join(sel)
            + ": "
            + "; ".join(
                f"{' | '.join('+'.join(f) for f in row['families'])} {row['worst_selection_auroc']:.3f}"
                + (" (chosen)" if row["families"] == r["chosen_layout"] else "")
                for row in layouts
            )
            + ".",
        ]
    if r.get("augmentations"):
        lines += [
            "",
            "Clean negatives for the chosen features and layout, by the worst AUROC over every attack (worst shifted "
            "images flagged): "
            + "; ".join(
                f"{', '.join(row['kinds'])} {row['worst_auroc']:.3f} ({100 * row['worst_shift_flagged']:.0f}% "
                f"{max(row['shift_flagged'], key=row['shift_flagged'].get)})"
                + (" (chosen)" if row["kinds"] == r.get("chosen_augmentation") else "")
                for row in r["augmentations"]
            )
            + ".",
        ]
    return "\n".join(lines)


def _eligible(r: dict[str, Any], row: dict[str, Any]) -> bool:
    """Within the selection's rule: few enough transforms, few enough shifted clean images flagged."""
    c = r["config"]
    return len(row["transforms"]) <= c["max_transforms"] and row["worst_shift_flagged"] <= c["max_shift_flagged"]
