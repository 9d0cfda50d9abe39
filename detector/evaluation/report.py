"""The evaluation report: report.json (every figure), report.md (the tables a reader wants), and the figures
roc.png (per attack), generalisation.png (AUROC with 95% intervals on known, held-out and unseen attacks) and
corruptions.png (false-positive rate on shifted clean images)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bundle import write_json
from .detectors import DETECTORS, REFITTED, SUPERVISED
from .summary import ablation_table, group_worst, lee_table, reads_text

SHOWN = (
    "path",
    "path_refit",
    "path_only",
    "maha_mix",
    "lid",
    "path_hamming_std",
    "msp",
    "energy",
    "mahalanobis",
)
ROLES = {
    "known": "Known attacks (in the fit)",
    "selection": "Attacks used in selection (in no fit; their calibration figures chose a setting, or they share the "
    "fit's Linf budget)",
    "unseen": "Unseen attacks (in no fit and no choice)",
}


def write_report(r: dict[str, Any], curves: dict[str, dict[str, Any]], out: Path) -> None:
    write_json(out / "report.json", r)
    (out / "report.md").write_text(render_markdown(r))
    plot_rocs(curves, out / "roc.png")
    plot_generalisation(r, out / "generalisation.png")
    plot_corruptions(r, out / "corruptions.png")


def _cell(f: dict[str, Any], key: str = "auroc", ci: bool = True) -> str:
    """A figure [95%], or n/a where no attack succeeded on the images it needs."""
    if f.get(key) is None:
        return "n/a"
    bounds = f.get(f"{key}_ci") if ci else None
    return f"{f[key]:.3f} [{bounds[0]:.3f}, {bounds[1]:.3f}]" if bounds else f"{f[key]:.3f}"


def _who(d: str) -> str:
    return f"{d} (supervised)" if d in SUPERVISED else d


def held_out_text(s: dict[str, Any], none: str) -> str:
    """A detector's worst held-out or unseen AUROC and the attack it is reached on, from its summary; `none` where
    the run had no such attack for it."""
    held = s["worst_held_out_or_unseen"]
    return none if held is None else f"{held:.3f} ({s['worst_held_out_or_unseen_on']})"


def whole_half(r: dict[str, Any]) -> str:
    """The served threshold on the whole evaluation half, where the report's evaluation images are part of it."""
    c = r.get("served_clean_fpr")
    if c is None or c["images"] <= r["evaluation_images"]:
        return ""
    return (
        f"; on all {c['images']:,} images of the evaluation half ({c['n']:,} correctly classified) it flags "
        f"{c['rate']:.4f} [{c['ci'][0]:.4f}, {c['ci'][1]:.4f}]"
    )


def render_markdown(r: dict[str, Any]) -> str:
    cfr = r["clean_fpr"]["path"]
    lines = [
        f"# Detection report: {r['model']}",
        "",
        f"Evaluation images: {r['evaluation_images']} (test half disjoint from calibration); clean accuracy "
        f"{r['clean_accuracy']:.4f}. `path` threshold {r['threshold']:.4f} (target FPR {r['target_fpr']}); on clean "
        f"evaluation images it flags {cfr['rate']:.4f} [{cfr['ci'][0]:.4f}, {cfr['ci'][1]:.4f}]{whole_half(r)}.",
        "",
        f"`path` (served) reads {reads_text(r)} and was fitted on {r['fitted_on']}. The other supervised detectors "
        f"(`path_refit`, the same recipe and families; `path_only`, `path_consistency`, `path_residual` and "
        f"`path_all`, the same recipe on other families; `maha_mix`; `lid`) were fitted on {r['refit_images']} "
        "clean calibration images "
        "against the known attacks on them, without the served score's training images; unsupervised ones never saw "
        "an attack. Cells: AUROC [bootstrap 95% interval].",
        "",
        "## Served `path` per group of attacks",
        "",
        "| group | attacks | worst AUROC [95%] | worst flagged at the threshold [95%] |",
        "|---|---|---|---|",
    ]
    for role, title in ROLES.items():
        g = group_worst(r, role)
        if g is not None:
            lines.append(
                f"| {title.split(' (')[0].lower()} | {g['n']} | {g['auroc']:.3f} [{g['auroc_ci'][0]:.3f}, "
                f"{g['auroc_ci'][1]:.3f}] ({g['auroc_on']}) | {100 * g['tpr']:.1f}% [{100 * g['tpr_ci'][0]:.1f}, "
                f"{100 * g['tpr_ci'][1]:.1f}] ({g['tpr_on']}) |"
            )
    lines += [
        "",
        "## Worst cases",
        "",
        "| detector | worst known attack | worst held-out, selection or unseen attack |",
        "|---|---|---|",
    ]
    for d in SHOWN:
        s = r["summary"][d]
        known = "—" if s["worst_known"] is None else f"{s['worst_known']:.3f} ({s['worst_known_on']})"
        lines.append(f"| {_who(d)} | {known} | {held_out_text(s, '—')} |")
    for role, title in ROLES.items():
        names = [a for a, v in r["attacks"].items() if v["role"] == role]
        if not names:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| attack | what | success | n_adv | " + " | ".join(SHOWN) + " |",
            "|---|---|---|---|" + "---|" * len(SHOWN),
        ]
        for a in names:
            v = r["attacks"][a]
            lines.append(
                f"| {a} | {v['what']} | {v['success_rate']:.3f} | {v['n_adv']} | "
                + " | ".join(_cell(v["detectors"][d]) for d in SHOWN)
                + " |"
            )
    lines += ["", "## What each family adds", "", ablation_table(r)]
    if lee := lee_table(r):
        lines += [
            "",
            "## Against a Lee-faithful Mahalanobis upper bound",
            "",
            "Per-layer Mahalanobis distances after Lee et al.'s input preprocessing, one logistic regression per "
            "attack fitted on that attack and its noise magnitude chosen on it (two folds of "
            f"{r['config'].get('lee_limit', '?')} clean and at most as many adversarial evaluation images; each "
            "scored by the fold that did not see it, at that fold's 5%-FPR threshold). It sees every attack, so it "
            "bounds what a per-attack detector reaches; `path` never saw the selection and unseen attacks.",
            "",
            lee,
        ]
    lines += [
        "",
        "## Leave one out",
        "",
        "Each known attack scored by the supervised detectors refitted without it (beside: with it).",
        "",
        "| attack | " + " | ".join(f"{d} without / with" for d in REFITTED) + " |",
        "|---|" + "---|" * len(REFITTED),
    ]
    for a, v in r["leave_one_out"].items():
        lines.append(
            f"| {a} | "
            + " | ".join(f"{_cell(v[d])} / {_cell(r['attacks'][a]['detectors'][d], ci=False)}" for d in REFITTED)
            + " |"
        )
    lines += [
        "",
        "## Clean but shifted images",
        "",
        "False-positive rate at each detector's threshold on corrupted images that stay correctly classified "
        "(clean: " + ", ".join(f"{d} {r['clean_fpr'][d]['rate']:.3f}" for d in ("path", "msp", "mahalanobis")) + ").",
        "",
        "Augmented: the fit's clean augmentation applies this kind of change; selection: `dnd select` weighed it "
        "(neither: a shift no fit and no choice ever saw).",
        "",
        "| corruption | augmented | selection | accuracy | " + " | ".join(SHOWN) + " |",
        "|---|---|---|---|" + "---|" * len(SHOWN),
    ]
    for v in r["corruptions"].values():
        yes = {True: "yes", False: "no", None: "—"}
        lines.append(
            f"| {v['what']} | {yes[v.get('in_fit_augmentation')]} | {yes[v.get('in_selection')]} | "
            f"{v['accuracy']:.3f} | "
            + " | ".join(
                _cell(v["fpr"][d], "rate")
                if "ci" not in v["fpr"][d]
                else f"{v['fpr'][d]['rate']:.3f} [{v['fpr'][d]['ci'][0]:.3f}, {v['fpr'][d]['ci'][1]:.3f}]"
                for d in SHOWN
            )
            + " |"
        )
    if "adaptive" in r:
        lines += adaptive_markdown(r["adaptive"])
    lines += ["", f"Regenerated in {r['seconds']:.0f} s by `dnd evaluate`.", ""]
    return "\n".join(lines)


def adaptive_markdown(ad: dict[str, Any]) -> list[str]:
    c = ad["config"]
    kept = ["pgd-st", "pgd-sigmoid", "opgd-st", "square", "apgd-ce", "autoattack", "worst_case"]
    alone = ["model_alone_apgd_ce", "model_alone_apgd_ce_gates_blocked", "model_alone_worst", "detector_adds"]
    names = kept + alone
    lines = [
        "",
        "## Adaptive attacks: robust accuracy with rejection",
        "",
        f"Share of {ad['n']} evaluation images a user keeps (classified correctly, or flagged) under detector-aware "
        f"attacks of {c['steps']} steps and {c['restarts']} restarts (Square: {c['square_queries']} queries), and "
        "under APGD-CE and AutoAttack on the network alone, judged by the real detector. Clean: accuracy "
        f"{ad['clean_accuracy']:.3f}, flagged {ad['clean_flag_rate']:.3f}. `worst_case`: kept against every attack. "
        "`model_alone_*`: the network without rejection (accuracy); `model_alone_worst`: correct under every attack; "
        "`detector_adds`: worst_case - model_alone_worst.",
        "",
        "| budget | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for b, row in ad["budgets"].items():
        lines.append(f"| {b} | " + " | ".join(f"{row[n]:.3f}" if n in row else "-" for n in names) + " |")
    s = ad["sanity"]
    lines += [
        "",
        f"Sanity: 20 steps and 1 restart keep {s['pgd-st_20_steps_1_restart']:.3f} (more steps never raise the "
        f"figure: {s['more_steps_never_raise']}); an unbounded budget keeps {s['pgd-st_unbounded']:.3f}; APGD-CE "
        "through straight-through gates never leaves the network more accurate than with the gates' gradient "
        f"blocked: {s['gate_gradient_never_weakens']}.",
    ]
    if "model_alone_autoattack" in ad:
        lines.append(
            f"The network alone under AutoAttack (standard) at the largest budget: {ad['model_alone_autoattack']:.3f}."
        )
    return lines


def _plt():  # matplotlib.pyplot, imported when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rocs(curves: dict[str, dict[str, Any]], path: Path) -> None:
    plt = _plt()
    n = max(len(curves), 1)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, dets) in zip(axes.flat, curves.items()):
        for d in SHOWN:
            if dets.get(d) is not None:
                ax.plot(*dets[d], label=d, lw=2 if d == "path" else 1)
        ax.plot([0, 1], [0, 1], "k:", lw=0.5)
        ax.set(title=name, xlabel="false-positive rate", ylabel="true-positive rate", xlim=(0, 1), ylim=(0, 1))
        if ax.get_legend_handles_labels()[0]:  # an attack that never succeeded has no curve
            ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_generalisation(r: dict[str, Any], path: Path) -> None:
    """AUROC with its interval per detector: known attacks, held-out (leave-one-out) and unseen attacks."""
    plt = _plt()
    # attacks that never succeeded have no AUROC to draw
    groups = [(a, lambda d, a=a: r["attacks"][a]["detectors"][d]) for a in r["attacks"] if r["attacks"][a]["n_adv"]]
    groups += [
        (f"{a}\nheld out", lambda d, a=a: r["leave_one_out"][a].get(d, r["attacks"][a]["detectors"][d]))
        for a in r["leave_one_out"]
        if r["attacks"][a]["n_adv"]
    ]
    dets = [d for d in SHOWN if d in DETECTORS]
    fig, ax = plt.subplots(figsize=(max(10, 1.1 * len(groups)), 4.5))
    w = 0.8 / len(dets)
    for j, d in enumerate(dets):
        vals = [g(d) for _, g in groups]
        xs = [i + (j - len(dets) / 2) * w + w / 2 for i in range(len(groups))]
        ys = [v["auroc"] for v in vals]
        err = [[y - v["auroc_ci"][0] for y, v in zip(ys, vals)], [v["auroc_ci"][1] - y for y, v in zip(ys, vals)]]
        ax.bar(xs, ys, w, yerr=err, label=d, capsize=1, alpha=0.9 if d == "path" else 0.6)
    ax.axhline(0.95, color="k", ls=":", lw=0.8)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], fontsize=7)
    ax.set(ylabel="AUROC (95% interval)", ylim=(0.3, 1.0), title="Detection on known, held-out and unseen attacks")
    ax.legend(fontsize=7, ncol=4, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_corruptions(r: dict[str, Any], path: Path) -> None:
    plt = _plt()
    names = list(r["corruptions"])
    fig, ax = plt.subplots(figsize=(9, 4))
    dets = ("path", "path_refit", "maha_mix", "lid", "msp", "mahalanobis")
    w = 0.8 / len(dets)
    for j, d in enumerate(dets):
        ys = [r["corruptions"][c]["fpr"][d]["rate"] for c in names]
        ax.bar([i + (j - len(dets) / 2) * w + w / 2 for i in range(len(names))], ys, w, label=d)
    ax.axhline(r["target_fpr"], color="k", ls=":", lw=0.8, label="target FPR")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylabel="flagged, still correctly classified", title="False positives on clean but shifted images")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
