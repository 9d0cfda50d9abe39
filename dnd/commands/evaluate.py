"""`dnd evaluate`: the detection report (known, held-out and unseen attacks, corruptions, baselines, adaptive)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..args import add_device, attack_names, count, finite, rate


def register(sub: argparse._SubParsersAction) -> None:
    from detector.evaluation.config import EvalConfig

    e = EvalConfig()
    p = sub.add_parser(
        "evaluate", help="detection report: known, held-out and unseen attacks, corruptions, baselines, adaptive attack"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--attacks",
        default=",".join(e.known),
        help=f"known attacks: the scorer's fit families, at their evaluation parameters (default {','.join(e.known)})",
    )
    p.add_argument(
        "--selection",
        default=",".join(e.selection),
        help="attacks in no fit that informed a recipe choice or share the fit's budget "
        f"(default {','.join(e.selection)}; '' for none)",
    )
    p.add_argument(
        "--unseen",
        default=",".join(e.unseen),
        help=f"attacks no fit and no recipe choice ever touched (default {','.join(e.unseen)}; '' for none)",
    )
    p.add_argument("--corruptions", default=",".join(e.corruptions), help="corruptions of clean images ('' for none)")
    p.add_argument("--limit", type=count, default=e.limit, help="evaluation images (class-balanced; 0 = all 5,000)")
    p.add_argument(
        "--slow-limit",
        type=count,
        default=e.slow_limit,
        help=f"evaluation images for the costly attacks {', '.join(e.slow)} (0 = all)",
    )
    p.add_argument(
        "--fit-limit",
        type=count,
        default=e.fit_limit,
        help="calibration images the supervised detectors are refitted on (0 = the whole fit part)",
    )
    p.add_argument(
        "--lee-limit",
        type=count,
        default=e.lee_limit,
        help="clean and adversarial images per attack for the Lee-faithful Mahalanobis upper bound (0 = skip it)",
    )
    p.add_argument(
        "--adaptive-limit",
        type=count,
        default=e.adaptive_limit,
        help="evaluation images for the adaptive attacks (0 = none of them run)",
    )
    p.add_argument(
        "--adaptive-eps",
        default=",".join(f"{v:g}" for v in e.adaptive.eps),
        help="Linf budgets in 1/255 of the adaptive attacks",
    )
    p.add_argument("--adaptive-steps", type=count, default=e.adaptive.steps)
    p.add_argument("--adaptive-restarts", type=count, default=e.adaptive.restarts)
    p.add_argument("--square-queries", type=count, default=e.adaptive.square_queries)
    p.add_argument("--no-autoattack", action="store_true", help="skip AutoAttack on the network alone")
    p.add_argument("--bootstrap", type=count, default=e.bootstrap, help="resamples for the 95%% intervals")
    p.add_argument(
        "--source",
        default=e.source,
        help="the network transfer attacks are crafted on; one attack may name its own, NAME@PATH "
        "(e.g. --unseen transfer-ti@models/vgg19-dense: crafted on another architecture)",
    )
    p.add_argument("--threshold", type=finite, default=None, help="override the calibrated threshold")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-save-attacks", action="store_true", help="do not keep OUT/attacks/*.safetensors")
    add_device(p)
    p.set_defaults(handler=cmd_evaluate, out_is_dir=True)

    from detector.evaluation.selection import SelectConfig

    c = SelectConfig()
    p = sub.add_parser(
        "select",
        help="choose the score's feature families on the calibration half (consistency transforms, confidence)",
    )
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=count, default=c.images, help="calibration fit-part images (class-balanced)")
    p.add_argument(
        "--selection-attacks",
        default=",".join(c.selection_attacks),
        help="attacks in no fit whose figures count in the choice (they belong in `dnd evaluate --selection`)",
    )
    p.add_argument("--source", default=c.source, help="bundle the transfer attacks are crafted on")
    p.add_argument("--tree-iterations", type=count, default=c.tree_iterations)
    p.add_argument(
        "--max-shift-flagged",
        type=rate,
        default=c.max_shift_flagged,
        help=f"most of any weighed corruption's clean images a choice may flag (default {c.max_shift_flagged:g})",
    )
    add_device(p)
    p.set_defaults(handler=cmd_select, out_is_dir=True)


def _names_or_none(csv: str) -> tuple[str, ...]:
    return tuple(attack_names(csv)) if csv.strip() else ()


def cmd_evaluate(a: argparse.Namespace) -> None:
    from detector.adaptive import AdaptiveConfig
    from detector.api import load_detector
    from detector.corruptions import CORRUPTIONS
    from detector.evaluation import EvalConfig, evaluate
    from detector.evaluation.report import held_out_text
    from detector.evaluation.summary import GROUPS, group_worst

    corruptions = tuple(c.strip() for c in a.corruptions.split(",") if c.strip())
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise ValueError(f"unknown corruption(s) {bad}; expected some of {sorted(CORRUPTIONS)}")
    cfg = EvalConfig(
        known=tuple(attack_names(a.attacks)),
        selection=_names_or_none(a.selection),
        unseen=_names_or_none(a.unseen),
        corruptions=corruptions,
        limit=a.limit,
        slow_limit=a.slow_limit,
        fit_limit=a.fit_limit,
        lee_limit=a.lee_limit,
        adaptive_limit=a.adaptive_limit,
        adaptive=AdaptiveConfig(
            eps=tuple(float(v) for v in a.adaptive_eps.split(",") if v.strip()),
            steps=a.adaptive_steps,
            restarts=a.adaptive_restarts,
            square_queries=a.square_queries,
            autoattack=not a.no_autoattack,
            seed=a.seed,
        ),
        bootstrap=a.bootstrap,
        source=a.source,
        seed=a.seed,
    )
    det = load_detector(a.model, a.device, a.threshold)
    r = evaluate(det, a.data, a.out, cfg, not a.no_save_attacks)
    served = r["served_clean_fpr"]
    whole = ""
    if served["n"] > r["clean_fpr"]["path"]["n"]:  # --limit attacked part of the evaluation half
        whole = f", {served['rate']:.4f} of the {served['n']} correct ones of the whole evaluation half"
    print(
        f"clean accuracy {r['clean_accuracy']:.4f} on {r['evaluation_images']} evaluation images; `path` flags "
        f"{r['clean_fpr_at_threshold']:.4f} of clean ones{whole}"
    )
    for name, at in r["attacks"].items():
        f = at["detectors"]["path"]
        auroc = (
            "n/a (no successful attack)"
            if f["auroc"] is None
            else (f"{f['auroc']:.3f} [{f['auroc_ci'][0]:.3f}, {f['auroc_ci'][1]:.3f}]")
        )
        print(f"{name} ({at['role']}): success {at['success_rate']:.3f} | path AUROC {auroc}")
    for role, name in GROUPS.items():
        g = group_worst(r, role)
        if g is not None:
            print(
                f"path, {name} ({g['n']} attacks): worst AUROC {g['auroc']:.3f} ({g['auroc_on']}), worst flagged at "
                f"the threshold {g['tpr']:.3f} [{g['tpr_ci'][0]:.3f}, {g['tpr_ci'][1]:.3f}] ({g['tpr_on']})"
            )
    print(f"path worst held-out, selection or unseen AUROC: {held_out_text(r['summary']['path'], 'none evaluated')}")
    for budget, row in r.get("adaptive", {}).get("budgets", {}).items():
        print(
            f"adaptive, Linf {budget}: kept (correct or flagged) worst case {row['worst_case']:.3f}, network alone "
            f"{row['model_alone_worst']:.3f} (the detector adds {row['detector_adds']:+.3f})"
        )
    print(f"wrote {Path(a.out) / 'report.json'}, report.md and figures")


def cmd_select(a: argparse.Namespace) -> None:
    from detector.api import load_detector
    from detector.evaluation.selection import SelectConfig, select

    cfg = SelectConfig(
        images=a.images,
        selection_attacks=_names_or_none(a.selection_attacks),
        source=a.source,
        tree_iterations=a.tree_iterations,
        max_shift_flagged=a.max_shift_flagged,
    )
    r = select(load_detector(a.model, a.device), a.data, a.out, cfg)
    chosen, aug = r["chosen"], r.get("chosen_augmentation")
    print(
        "chosen: none passes the limits"
        if chosen is None
        else f"chosen: transforms {','.join(chosen['transforms']) or 'none'}, confidence {chosen['confidence']}, "
        f"residual {chosen['residual']}, families {' | '.join('+'.join(f) for f in r['chosen_layout'] or [])}, "
        f"clean augmentation {','.join(aug) if aug else 'none within the limit'}; table in {a.out}/report.md"
    )
