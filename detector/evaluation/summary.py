"""Summary tables of evaluation reports, in Markdown: what the README and docs show, rendered from report.json so
that no figure is typed by hand (`make docs` writes them; a test fails when a written table disagrees with its
report). The bundles' own tables (metrics.json, the profiles' calibration record) are in bundle_tables.py."""

from __future__ import annotations

from typing import Any

# The detectors beside the served `path` in the detection table, and the names a reader knows them by.
BASELINES = {
    "path_refit": "`path_refit`",
    "maha_mix": "Mahalanobis layers, one fit on the attack mix (Lee-style, no preprocessing)",
    "lid": "LID",
    "msp": "max-softmax",
    "mahalanobis": "Mahalanobis",
}
ADAPTIVE = {
    "pgd-st": "PGD, straight-through",
    "pgd-sigmoid": "PGD, sigmoid gates",
    "opgd-st": "orthogonal PGD",
    "square": "Square",
    "apgd-ce": "APGD-CE",
}


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def interval(v: float, ci: list[float] | None, fmt: str = ".3f") -> str:
    return f"{v:{fmt}} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:{fmt}}"


def rate_interval(v: float, ci: list[float]) -> str:
    return f"{100 * v:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def served_clean(r: dict[str, Any]) -> str:
    """The served threshold's share of clean, correctly classified images flagged [95%] and their number: on the
    whole evaluation half where the report measured it there, else on its evaluation images."""
    c = r.get("served_clean_fpr") or r["clean_fpr"]["path"]
    return f"{rate_interval(c['rate'], c['ci'])} of {c['n']:,}"


def _bold(text: str, bold: bool) -> str:
    return f"**{text}**" if bold else text


def detection_table(r: dict[str, Any]) -> str:
    """Per attack: its group (in the fit, used in selection, unseen), adversarial images, `path` AUROC with its
    interval and the share it flags at the threshold, then each baseline's AUROC; the best AUROC of a row in bold."""
    head = [
        "attack",
        "what",
        "group",
        "adversarial images",
        "`path` AUROC [95%]",
        "`path` flags at threshold [95%]",
    ]
    head += list(BASELINES.values())
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in r["attacks"].items():
        d = {"maha_mix" if k == "maha_ensemble" else k: f for k, f in v["detectors"].items()}  # its earlier name
        aurocs = {k: d[k]["auroc"] for k in ("path", *BASELINES) if d.get(k, {}).get("auroc") is not None}
        best = max(aurocs.values())
        p = d["path"]
        row = [
            name,
            v["what"],
            GROUPS[role_of(r, name)],
            f"{v['n_adv']:,}",
            _bold(interval(p["auroc"], p.get("auroc_ci")), aurocs["path"] == best),
            rate_interval(p["tpr_at_threshold"], p["tpr_at_threshold_ci"]),
        ]
        row += [_bold(f"{aurocs[k]:.3f}", aurocs[k] == best) if k in aurocs else "n/a" for k in BASELINES]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


GROUPS = {"known": "in the fit", "selection": "used in selection", "unseen": "unseen"}
# attacks that informed a recipe choice or share the fit's budget: a report written before the protocol had a
# "selection" group called them unseen
_SELECTION = ("pgdl2", "transfer", "apgd-dlr", "square")


def role_of(r: dict[str, Any], attack: str) -> str:
    """An attack's group in report r (see GROUPS)."""
    role = r["attacks"][attack]["role"]
    if role == "unseen" and "selection" not in r.get("config", {}) and attack in _SELECTION:
        return "selection"
    return role


def reads_text(r: dict[str, Any]) -> str:
    """What the served score reads, from the report's calibration record."""
    f = r.get("calibration", {}).get("features") or {"families": ["path"], "transforms": {}}
    parts = ["path features"]
    if f.get("transforms"):
        parts.append("path consistency under " + ", ".join(f["transforms"].values()))
    if "confidence" in f.get("families", []):
        parts.append("output confidence")
    if "residual" in f.get("families", []):
        parts.append("the input's median-filter residual")
    return " + ".join(parts)


def ablation_table(r: dict[str, Any]) -> str:
    """Per attack: AUROC and share flagged at each detector's own threshold of the `path_refit` recipe reading path
    features only, + consistency, + residual, + confidence (all families), fitted on the same images. Reports written
    before `path_all` existed read the served families off `path_refit`, which then read all three; a column none of
    the report's attacks has (`path_residual` before the residual family existed) is left out."""
    dets = {
        "path_only": "path only",
        "path_consistency": "+ consistency",
        "path_residual": "+ residual",
        "path_all": "+ confidence",
    }
    dets = {
        d: t for d, t in dets.items() if d != "path_residual" or any(d in v["detectors"] for v in r["attacks"].values())
    }
    head = ["attack", "group", *(f"{t}: AUROC / flagged" for t in dets.values())]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in r["attacks"].items():
        cells = []
        for d in dets:
            f = v["detectors"].get(d) or (v["detectors"].get("path_refit", {}) if d == "path_all" else {})
            cells.append("n/a" if f.get("auroc") is None else f"{f['auroc']:.3f} / {pct(f['tpr_at_threshold'])}")
        lines.append(f"| {name} | {GROUPS[role_of(r, name)]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def lee_table(r: dict[str, Any]) -> str:
    """Per attack: the served `path` beside the Lee-faithful Mahalanobis upper bound (fitted on that very attack,
    noise magnitude chosen on it, two-fold): AUROC [95%] and the share flagged at each one's 5%-FPR threshold.
    Empty for a report without it."""
    head = ["attack", "group", "`path` AUROC / flagged", "Lee upper bound AUROC [95%] / flagged", "noise chosen"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, v in r["attacks"].items():
        lee, p = v.get("lee_upper_bound"), v["detectors"]["path"]
        if lee is None or lee.get("auroc") is None:
            continue
        ahead, served = p["auroc"] >= lee["auroc"], f"{p['auroc']:.3f}"
        lines.append(
            f"| {name} | {GROUPS[role_of(r, name)]} | {_bold(served, ahead)} / "
            f"{pct(p['tpr_at_threshold'])} | {_bold(interval(lee['auroc'], lee['auroc_ci']), not ahead)} / "
            f"{pct(lee['tpr_at_threshold'])} | {', '.join(f'{e:g}' for e in lee['eps_chosen'])} |"
        )
    return "\n".join(lines) if len(lines) > 2 else ""


def group_worst(r: dict[str, Any], role: str) -> dict[str, Any] | None:
    """The served `path`'s worst AUROC and worst share flagged at the threshold over the attacks of one role
    ("known": in the fit; "selection": in no fit, but used in a recipe choice; "unseen": in no fit and no choice),
    each with its attack and interval; None without such attacks (or none that ever succeeded)."""
    rows = [
        (a, v["detectors"]["path"])
        for a, v in r["attacks"].items()
        if role_of(r, a) == role and v["detectors"]["path"].get("auroc") is not None
    ]
    if not rows:
        return None
    a_auc, p_auc = min(rows, key=lambda t: t[1]["auroc"])
    a_tpr, p_tpr = min(rows, key=lambda t: t[1]["tpr_at_threshold"])
    return {
        "n": len(rows),
        "auroc": p_auc["auroc"],
        "auroc_ci": p_auc.get("auroc_ci"),
        "auroc_on": a_auc,
        "tpr": p_tpr["tpr_at_threshold"],
        "tpr_ci": p_tpr["tpr_at_threshold_ci"],
        "tpr_on": a_tpr,
        "best_auroc": max(p["auroc"] for _, p in rows),
        "best_tpr": max(p["tpr_at_threshold"] for _, p in rows),
    }


def worst_case_table(reports: dict[str, dict[str, Any]]) -> str:
    """Per bundle: clean accuracy, the share of clean images flagged, and per group of attacks (in the fit, in no
    fit) the worst AUROC and the worst share flagged at the threshold, with the attacks they fall on; the worst share
    of corrupted clean images flagged."""
    head = ["bundle", "evaluation images", "clean accuracy", "clean images flagged [95%] of n correct"]
    for g in GROUPS.values():
        head += [f"{g}: worst AUROC", "worst flagged"]
    head += ["most corrupted clean images flagged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in reports.items():
        row = [f"`{name}`", f"{r['evaluation_images']:,}", pct(r["clean_accuracy"]), served_clean(r)]
        for role in GROUPS:
            g = group_worst(r, role)
            if g is None:
                row += ["—", "—"]
            else:
                row += [
                    f"{interval(g['auroc'], g['auroc_ci'])} ({g['auroc_on']})",
                    f"{rate_interval(g['tpr'], g['tpr_ci'])} ({g['tpr_on']})",
                ]
        worst = max(r["corruptions"].values(), key=lambda v: v["fpr"]["path"]["rate"])
        row.append(f"{pct(worst['fpr']['path']['rate'])} ({worst['what']})")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def adaptive_table(reports: dict[str, dict[str, Any]]) -> str:
    """Per bundle and budget: the share of images kept (classified correctly or flagged) under each adaptive attack,
    the worst case over all of them, the network alone on the same images, and what the detector adds."""
    head = ["bundle", "images", "budget", *ADAPTIVE.values(), "**worst case**", "network alone, same images"]
    head.append("detector adds")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in reports.items():
        ad = r.get("adaptive")
        if ad is None:
            continue
        for budget, row in ad["budgets"].items():
            cells = [f"`{name}`", str(ad["n"]), budget]
            cells += [f"{row[k]:.2f}" if k in row else "—" for k in ADAPTIVE]
            cells += [f"**{row['worst_case']:.2f}**", f"{row['model_alone_worst']:.2f}", f"{row['detector_adds']:+.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def depth_table(reports: dict[str, dict[str, Any]]) -> str:
    """The served `path` of several bundles side by side, one column each: what its score was fitted on, the clean
    images it flags, then per attack evaluated in every report its AUROC [95%], the share flagged at its threshold and
    the attack's group in that report (an attack in one bundle's fit may be unseen by another's)."""
    names = list(reports)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    cal = [r["calibration"] for r in reports.values()]
    row("fitted against", [", ".join(c["attacks"]) for c in cal])
    row("training images in the fit", [f"{c.get('extra_fit_images', 0):,}" for c in cal])
    row("evaluation images", [f"{r['evaluation_images']:,}" for r in reports.values()])
    row("clean accuracy", [f"{100 * r['clean_accuracy']:.1f}%" for r in reports.values()])
    row("clean images flagged", [served_clean(r) for r in reports.values()])
    first = reports[names[0]]["attacks"]
    for attack in (a for a in first if all(a in r["attacks"] for r in reports.values())):
        cells = []
        for r in reports.values():
            p = r["attacks"][attack]["detectors"]["path"]
            cells.append(
                "n/a"
                if p.get("auroc") is None
                else f"{interval(p['auroc'], p.get('auroc_ci'))} / {pct(p['tpr_at_threshold'])} "
                f"({GROUPS[role_of(r, attack)]})"
            )
        row(f"{attack}: {first[attack]['what']}", cells)
    return "\n".join(lines)
