"""`dnd select`: which feature families the served score reads, chosen on the calibration half only.

On a class-balanced part of the calibration half's *fit* images (never the evaluation half): clean images (also under
the calibration's random corruptions, as negatives), the fit's attacks at the recipe's radii, the selection attacks
(attacks in no fit, e.g. PGD-L2) and every evaluation corruption. Every candidate (path features alone, or with path
consistency under some transforms, with or without output confidence, with or without the input's median-filter
residual) is cross-fitted on two halves of the images
(each image's attacks stay in its half): gradient-boosted trees, one model per attack family, fitted as the served
scorer's are (trees.fit_family_trees). Each candidate gets, per attack, the AUROC and the share flagged at a
threshold that flags 5% of the clean held-out images, and per corruption the share of its still correctly classified
images flagged.

The recipe studied is `dnd profiles`' default (CalibrationConfig(): its attacks and radii), with transferred attacks
crafted on `source`; the candidates are compared under the first of FAMILY_LAYOUTS. The choice: among candidates
with at most `max_transforms` transforms (each costs one more forward of the batch) whose worst corruption flags at
most `max_shift_flagged` of clean shifted images, the best worst-case AUROC over all attacks. Then, for the chosen
features, each of FAMILY_LAYOUTS (which attacks share a tree model, and whether transferred PGD is in the fit at all)
within the same corruption limit, by its worst AUROC over the selection attacks, which no layout fits. Last, for the
chosen features and layout, each of AUGMENTATIONS (the kinds of change the clean negatives are also shown under)
within the same limit, by its worst AUROC over all attacks. The attacks named here move to the evaluation's "used in
selection" group; the corruptions weighed are SELECTION_CORRUPTIONS, and the evaluation's others are held out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..api import Detector
from ..attack_cache import AttackCache, tensor_sha256
from ..attacks import is_transfer, run_attack, split_name
from ..bundle import WEIGHTS, file_sha256, write_json
from ..calibration import CalibrationConfig, fit_attack
from ..consistency import TRANSFORMS, FeatureSpec
from ..corruptions import BASE_AUGMENT, COLOUR_JITTER_AUGMENT, SELECTION_CORRUPTIONS, corrupt, random_corruptions
from ..data import load_split, to_unit_float
from ..features import feature_count
from ..inputs import inputs_of_images
from ..splits import SPLIT_SEED, balanced_subset, fit_threshold_split, split_test
from ..transfer import TransferSources
from ..trees import TREE_PARAMS, fit_family_trees
from .config import EvalConfig
from .rocs import auroc
from .selection_report import render

CANDIDATES: tuple[tuple[tuple[str, ...], bool, bool], ...] = (  # transforms, confidence, residual
    ((), False, False),
    ((), True, False),
    ((), False, True),
    *(((t,), True, False) for t in TRANSFORMS),
    (("median",), False, True),
    (("median", "shift"), False, False),
    (("median", "shift"), True, False),
    (("median", "shift"), False, True),
    (("median", "shift"), True, True),
    (("median", "noise"), True, False),
    (("shift", "noise"), True, False),
    (("median", "shift", "noise"), True, False),
    (("median", "flip"), True, False),
    (("median", "flip"), False, True),
    (("shift", "flip"), True, False),
    (("median", "shift2"), True, False),
    (("median", "shift2"), False, True),
    (("shift2", "flip"), True, False),
    (("median", "shift", "flip"), True, False),
)

# Which fit attacks share a tree model; the candidates are compared under the first
FAMILY_LAYOUTS: tuple[tuple[tuple[str, ...], ...], ...] = (
    (("fgsm", "pgd", "transfer"), ("cw", "deepfool")),
    (("fgsm", "pgd"), ("cw", "deepfool"), ("transfer",)),
    (("fgsm", "pgd"), ("cw", "deepfool")),  # transferred PGD in no fit
)
FIT_ATTACKS = tuple(dict.fromkeys(n for layout in FAMILY_LAYOUTS for f in layout for n in f))  # every layout's, once
# The clean negatives' augmentation kinds (detector/corruptions.py AUGMENT), compared last under the chosen features
# and layout; the candidates and layouts are compared under the first, the served recipe's
AUGMENTATIONS: tuple[tuple[str, ...], ...] = (BASE_AUGMENT, COLOUR_JITTER_AUGMENT)


@dataclass(frozen=True)
class SelectConfig:
    images: int = 1000  # calibration fit-part images (class-balanced)
    # attacks in no fit whose figures count in the choice: the calibration's selection group, so that the attacks the
    # evaluation reports as "used in selection" are the ones every recipe choice weighed
    selection_attacks: tuple[str, ...] = CalibrationConfig().selection_attacks
    source: str = EvalConfig.source  # the network transfer attacks are crafted on, as in `dnd evaluate`
    max_transforms: int = 2
    # the most of any weighed corruption's clean images a candidate may flag: the product's target for shifted images
    max_shift_flagged: float = 0.10
    tree_iterations: int = 100
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cross_fit(
    sets: dict[str, tuple[Tensor, Tensor]],
    cols: list[int],
    families: list[list[str]],
    fold: Tensor,
    iterations: int,
) -> dict[str, Tensor]:
    """Held-out scores of every set (name -> (inputs, image index)) under trees fitted per family on the other fold's
    'clean' + 'augmented' negatives and the family's attacks."""
    scores = {k: torch.zeros(len(v[1])) for k, v in sets.items()}
    params = {**TREE_PARAMS, "max_iter": iterations}
    for f in (0, 1):
        neg = torch.cat([sets[k][0][fold[sets[k][1]] == f] for k in ("clean", "augmented")])[:, cols]
        pos = [torch.cat([sets[a][0][fold[sets[a][1]] == f] for a in fam])[:, cols] for fam in families]
        pos = [p for p in pos if len(p)]  # a family whose attacks never succeeded on this fold has nothing to fit
        if not pos:
            continue
        trees = fit_family_trees(neg, pos, params)  # the served recipe's tree fit (PathScorer.fit)
        for k, (x, idx) in sets.items():
            held = fold[idx] != f
            if held.any():
                scores[k][held] = torch.logsumexp(trees.raw(x[held][:, cols]), 1).float()
    return scores


def candidate_row(
    sets: dict[str, tuple[Tensor, Tensor]],
    cols: list[int],
    families: list[list[str]],
    attacks: list[str],
    fold: Tensor,
    iterations: int,
) -> dict[str, Any]:
    """Cross-fitted figures of one candidate: per attack AUROC and share flagged at a threshold flagging 5% of the
    held-out clean images, per corruption the share flagged, and the worst of each."""
    sc = cross_fit(sets, cols, families, fold, iterations)
    clean = sc["clean"]
    thr = float(torch.quantile(clean.double(), 0.95))
    att = {  # attacks that never succeeded have nothing to score
        a: {"auroc": round(auroc(clean, sc[a]), 4), "flagged": round(float((sc[a] > thr).float().mean()), 4)}
        for a in attacks
        if len(sc[a])
    }
    shift = {k.split(":", 1)[1]: round(float((v > thr).float().mean()), 4) for k, v in sc.items() if ":" in k}
    return {
        "attacks": att,
        "worst_auroc": min(v["auroc"] for v in att.values()),
        "worst_flagged": min(v["flagged"] for v in att.values()),
        "shift_flagged": shift,
        "worst_shift_flagged": max(shift.values()),
    }


def family_layouts(
    sets: dict[str, tuple[Tensor, Tensor]],
    chosen: dict[str, Any],
    everything: FeatureSpec,
    n_path: int,
    layers: int,
    fold: Tensor,
    cfg: SelectConfig,
) -> list[dict[str, Any]]:
    """The chosen features under each of FAMILY_LAYOUTS, judged by the worst AUROC over the selection attacks."""
    spec = FeatureSpec(tuple(chosen["transforms"]), chosen["confidence"], chosen.get("residual", False))
    cols = spec.columns_in(everything, n_path, layers)
    rows = []
    for layout in tqdm(FAMILY_LAYOUTS, desc="family layouts", unit="layout"):
        fams = [list(f) for f in layout]
        r = candidate_row(sets, cols, fams, [*FIT_ATTACKS, *cfg.selection_attacks], fold, cfg.tree_iterations)
        held = [r["attacks"][a]["auroc"] for a in cfg.selection_attacks if a in r["attacks"]]
        rows.append({"families": fams, **r, "worst_selection_auroc": min(held) if held else float("nan")})
    return rows


def augmentation_rows(
    sets: dict[str, tuple[Tensor, Tensor]],
    cols: list[int],
    layout: list[list[str]],
    augmented: Callable[[tuple[str, ...]], Tensor],
    fold: Tensor,
    cfg: SelectConfig,
) -> list[dict[str, Any]]:
    """The chosen features (`cols`) and layout with the clean negatives under each of AUGMENTATIONS (`augmented`:
    kinds -> the inputs of the clean images so augmented): per attack AUROC, per weighed corruption the share
    flagged. The choice: the best worst AUROC among the sets within the shift limit."""
    rows = []
    for kinds in tqdm(AUGMENTATIONS, desc="augmentations", unit="set"):
        aug = (augmented(kinds), sets["clean"][1])
        attacks = [*FIT_ATTACKS, *cfg.selection_attacks]
        row = candidate_row({**sets, "augmented": aug}, cols, layout, attacks, fold, cfg.tree_iterations)
        rows.append({"kinds": list(kinds), **row})
    return rows


def select(det: Detector, data: str | Path, out: str | Path, cfg: SelectConfig = SelectConfig()) -> dict[str, Any]:
    """Run the study; write OUT/report.json and OUT/report.md. Returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    k = len(det.classes)
    test = load_split(data, "test", det.model.cfg.input_size)
    cal = det.profiles.meta.get("calibration", {})
    ccfg = replace(CalibrationConfig(), source=cfg.source)  # the default recipe, on the profiles' calibration split
    cal_idx, _ = split_test(test.y, k, cal.get("split_seed", SPLIT_SEED))
    fit_rel, _ = fit_threshold_split(test.y[cal_idx], k, ccfg.seed, ccfg.threshold_share)
    idx = balanced_subset(cal_idx[fit_rel], test.y, cfg.images, k)
    x, y = to_unit_float(test.x[idx]), test.y[idx]
    ok = det.predict(x).labels == y
    x, y = x[ok], y[ok]
    everything = FeatureSpec(tuple(TRANSFORMS), True, True)
    profiles = replace(det.profiles, meta={**det.profiles.meta, "features": everything.to_dict()})

    def inputs(xs: Tensor) -> Tensor:
        return inputs_of_images(det.model, profiles, xs, device=det.device)[1]

    every = torch.arange(len(y))
    sets = {
        "clean": (inputs(x), every),
        "augmented": (inputs(random_corruptions(x, cfg.seed, ccfg.clean_augment)), every),
    }
    still = {}
    for c in tqdm(SELECTION_CORRUPTIONS, desc="corruptions", unit="corruption"):
        xc = corrupt(c, x)
        keep = det.predict(xc).labels == y
        sets[f"corruption:{c}"], still[c] = (inputs(xc[keep]), every[keep]), int(keep.sum())
    attacks = [*FIT_ATTACKS, *cfg.selection_attacks]  # the fit's, then the held-out ones the choice is judged on
    transfer = any(is_transfer(a) for a in attacks)
    sources = TransferSources(cfg.source, det.classes, det.device)
    # attacks kept under OUT/attacks (git-ignored), so that a re-run with other limits or candidates attacks nothing;
    # keyed by the run's source network, or by an attack's own (NAME@SOURCE)
    src = file_sha256(Path(cfg.source) / WEIGHTS) if transfer else ""
    src_of = lambda n: sources.key(n)["source"] if split_name(n)[1] else src  # noqa: E731
    cache = AttackCache(
        out / "attacks", {"seed": str(cfg.seed), "model": det.weights_sha256, "images": tensor_sha256(x)}
    )

    def attack(name: str) -> dict[str, Tensor]:
        if name in FIT_ATTACKS:
            adv, success = fit_attack(det.model, name, x, y, ccfg, det.device, sources.network(name))
        else:
            s = run_attack(det.model, name, x, y, seed=cfg.seed, device=det.device, source=sources.network(name))
            adv, success = s.x_adv[s.success], s.success
        return {"x_adv": adv, "success": success}

    for name in tqdm(attacks, desc="attacks", unit="attack"):
        got = cache.tensors(name, lambda n=name: attack(n), source=src_of(name), radii=str(ccfg.linf_eps))
        sets[name] = (inputs(got["x_adv"]), every[got["success"]])
    fold = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed + 1)) % 2
    n_path = feature_count([f.shape[1] for f in det.profiles.freq], det.profiles.gate_mean is not None)
    layers = len(det.profiles.freq)
    families = [list(f) for f in FAMILY_LAYOUTS[0]]
    rows = []
    for transforms, confidence, residual in tqdm(CANDIDATES, desc="candidates", unit="candidate"):
        cols = FeatureSpec(transforms, confidence, residual).columns_in(everything, n_path, layers)
        scored = candidate_row(sets, cols, families, attacks, fold, cfg.tree_iterations)
        rows.append({"transforms": list(transforms), "confidence": confidence, "residual": residual, **scored})
    ok_rows = [
        r
        for r in rows
        if len(r["transforms"]) <= cfg.max_transforms and r["worst_shift_flagged"] <= cfg.max_shift_flagged
    ]
    chosen = max(ok_rows, key=lambda r: r["worst_auroc"]) if ok_rows else None
    layouts = [] if chosen is None else family_layouts(sets, chosen, everything, n_path, layers, fold, cfg)
    fits = [r for r in layouts if r["worst_shift_flagged"] <= cfg.max_shift_flagged]
    layout = max(fits, key=lambda r: r["worst_selection_auroc"])["families"] if fits else None
    augmentations = []
    if layout is not None:
        spec = FeatureSpec(tuple(chosen["transforms"]), chosen["confidence"], chosen["residual"])
        cols = spec.columns_in(everything, n_path, layers)
        first = sets["augmented"][0]

        def augmented(kinds: tuple[str, ...]) -> Tensor:
            return first if kinds == ccfg.clean_augment else inputs(random_corruptions(x, cfg.seed, kinds))

        augmentations = augmentation_rows(sets, cols, layout, augmented, fold, cfg)
    within = [r for r in augmentations if r["worst_shift_flagged"] <= cfg.max_shift_flagged]
    report = {
        "model": det.name,
        "config": cfg.to_dict(),
        "images": len(y),
        "still_correct_under_corruption": still,
        "attacks": {a: len(sets[a][1]) for a in attacks},
        "candidates": rows,
        "chosen": None if chosen is None else {k: chosen[k] for k in ("transforms", "confidence", "residual")},
        "families": families,
        "family_layouts": layouts,
        "chosen_layout": layout,
        "augmentations": augmentations,
        "chosen_augmentation": max(within, key=lambda r: r["worst_auroc"])["kinds"] if within else None,
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render(report))
    return report
