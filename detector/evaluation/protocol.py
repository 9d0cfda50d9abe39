"""`dnd evaluate`: the detection protocol, every figure on the evaluation half of the test set.

Splits: profiles from train, the served scorer and threshold from the calibration half (`dnd profiles`), every figure
here from the disjoint evaluation half. The supervised detectors compared with it are refitted on the calibration
half's fit part (clean images against the known attacks, with the calibration recipe's Linf radii); thresholds of
every detector are set at the target FPR on the calibration half's threshold part. Negatives: clean, correctly
classified evaluation images; positives: successful attacks on them. Steps:
1. known attacks (the scorer's fit families at their evaluation parameters), every detector;
2. leave-one-out: each known attack against the supervised detectors refitted without it;
3. unseen attacks, which no fit ever sees;
4. corruptions: false-positive rate and accuracy on shifted clean images;
5. the adaptive attacks: robust accuracy with rejection (detector/adaptive/evaluation.py).
Attack sets are kept under OUT/attacks/ and reused by a re-run with the same settings (resume).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..adaptive import robust_report
from ..api import Detector, Prediction
from ..attack_cache import AttackCache
from ..attacks import AttackSet, describe, run_attack, split_name
from ..baselines.lee import EPS_GRID, cross_fit_per_attack, lee_distances
from ..calibration import CalibrationConfig, fit_attack
from ..corruptions import CORRUPTIONS, corrupt, random_corruptions
from ..data import Split, check_classes, load_split, to_unit_float
from ..parallel import is_main
from ..scorer import calibrate_threshold
from ..splits import SPLIT_SEED, balanced_subset, fit_threshold_split, split_test, train_sample
from ..transfer import TransferSources
from .config import EvalConfig
from .detectors import ALL, DETECTORS, REFITTED, Suite
from .report import write_report
from .rocs import detection_figures, flag_rate


def evaluate(
    det: Detector, data: str | Path, out: str | Path, cfg: EvalConfig = EvalConfig(), save_attacks: bool = True
) -> dict[str, Any]:
    """Run the whole protocol and write OUT/report.json, OUT/report.md and the figures. Returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    k = len(det.classes)
    size = det.model.cfg.input_size
    train, test = load_split(data, "train", size), load_split(data, "test", size)
    for split in (train, test):
        check_classes(split, det.classes, f"--data against the bundle {det.bundle}")
    cal_record = det.profiles.meta.get("calibration", {})
    check_unseen(cfg.unseen, cal_record, cfg.selection)
    ccfg = CalibrationConfig.from_record(cal_record)
    cal_idx, ev_idx = split_test(test.y, k, cal_record.get("split_seed", SPLIT_SEED))
    cal_idx = balanced_subset(cal_idx, test.y, ccfg.limit, k)
    fit_rel, thr_rel = fit_threshold_split(test.y[cal_idx], k, ccfg.seed, ccfg.threshold_share)
    fit_idx = balanced_subset(cal_idx[fit_rel], test.y, cfg.fit_limit, k)
    ev_half, ev_idx = ev_idx, balanced_subset(ev_idx, test.y, cfg.limit, k)
    x_of = lambda idx: to_unit_float(test.x[idx])  # noqa: E731

    gauss_idx, lid_idx = train_sample(train.y, 20000, k), train_sample(train.y, cfg.lid_reference, k, seed=7)
    suite = Suite.unsupervised(
        det, to_unit_float(train.x[gauss_idx]), train.y[gauss_idx], to_unit_float(train.x[lid_idx])
    )
    # keyed by the seed and the network's weights (a transferred attack also by its source's): a retrained bundle
    # evaluated into the same OUT attacks again
    cache = AttackCache(
        out / "attacks", {"seed": str(cfg.seed), "model": det.weights_sha256}, save_attacks and is_main()
    )
    attacks = [*cfg.known, *cfg.selection, *cfg.unseen]
    sources = TransferSources(cfg.source, det.classes, det.device)
    # supervised detectors on the calibration fit part: clean against the known attacks (the calibration recipe)
    fit_x, fit_y = correct(det, x_of(fit_idx), test.y[fit_idx])
    fit_views = {}
    for name in tqdm(cfg.known, desc="fit attacks", unit="attack"):
        adv = cache.tensors(
            f"fit-{name}",
            lambda n=name: {"x_adv": fit_attack(det.model, n, fit_x, fit_y, ccfg, det.device, sources.network(n))[0]},
            offered=str(len(fit_x)),
            **sources.key(name),
        )["x_adv"]
        if len(adv):  # an attack that never succeeds on the fit part has nothing to teach the refits
            fit_views[name] = suite.view(adv)
    clean_fit = fit_x
    if ccfg.clean_augment:  # the same negatives as the recipe: clean images, also under generic corruptions
        aug_x, _ = correct(det, random_corruptions(fit_x, ccfg.seed, ccfg.clean_augment), fit_y)
        clean_fit = torch.cat([fit_x, aug_x])
    suite.fit_supervised(suite.view(clean_fit), fit_views)

    thr_x, _ = correct(det, x_of(thr_idx := cal_idx[thr_rel]), test.y[thr_idx])
    thr_scores = suite.scores(suite.view(thr_x))
    target = det.profiles.meta.get("target_fpr", 0.05)
    thresholds = {d: det.threshold if d == "path" else calibrate_threshold(s, target) for d, s in thr_scores.items()}

    ev_x, ev_y = x_of(ev_idx), test.y[ev_idx]
    clean = det.predict(ev_x)
    ok = clean.labels == ev_y
    neg_view = suite.view(ev_x[ok])
    neg = {ALL: suite.scores(neg_view)}
    report: dict[str, Any] = {
        "model": det.name,
        "weights_sha256": det.weights_sha256,
        "profiles_sha256": det.profiles.meta.get("file_sha256"),
        "data_test_fingerprint": test.fingerprint,
        "evaluation_images": len(ev_y),
        "clean_accuracy": round(float(ok.float().mean()), 4),
        "config": cfg.to_dict(),
        "threshold": det.threshold,
        "target_fpr": target,
        "thresholds": thresholds,
        "calibration": cal_record,
        "fitted_on": fitted_on(cal_record),
        "refit_images": len(fit_x),
        "refit_attacked": {a: len(fit_views[a]) if a in fit_views else 0 for a in cfg.known},
        "clean_fpr": {d: flag_rate(s, thresholds[d], cfg.bootstrap) for d, s in neg[ALL].items()},
        "attacks": {},
        "leave_one_out": {},
    }
    report["clean_fpr_at_threshold"] = report["clean_fpr"]["path"]["rate"]
    report["served_clean_fpr"] = served_clean_fpr(det, test, ev_half, ev_idx, clean, cfg.bootstrap)
    curves: dict[str, dict[str, Any]] = {}
    xo, yo = ev_x[ok], ev_y[ok]
    lee_clean = None
    if cfg.lee_limit > 0:  # the upper bound's negatives: a class-balanced part of the same clean images
        lee_idx = balanced_subset(torch.arange(len(yo)), yo, cfg.lee_limit, k)
        lee_clean = lee_distances(det.model, suite.ensemble, xo[lee_idx], device=det.device)
    for name in tqdm(attacks, desc="evaluation attacks", unit="attack"):
        sub = balanced_subset(torch.arange(len(yo)), yo, cfg.slow_limit if name in cfg.slow else 0, k)
        s = cache.attack_set(
            name,
            len(sub),
            lambda n=name, i=sub: run_attack(
                det.model, n, xo[i], yo[i], seed=cfg.seed, device=det.device, source=sources.network(n)
            ),
            **sources.key(name),
        )
        pos_view = suite.view(s.x_adv[s.success])
        pos = suite.scores(pos_view)
        figs = {d: detection_figures(neg[ALL][d], pos[d], thresholds[d], cfg.bootstrap, cfg.seed) for d in DETECTORS}
        curves[name] = {d: f.pop("curve", None) for d, f in figs.items()}
        report["attacks"][name] = {
            "role": "known" if name in cfg.known else "selection" if name in cfg.selection else "unseen",
            "what": describe(name, cfg.source),
            "params": s.params,
            "images_attacked": len(s.y),
            "n_adv": int(s.success.sum()),
            "success_rate": round(s.success_rate, 4),
            "detectors": figs,
            "linf_max": round(float((s.x_adv - s.x_clean).abs().max()), 5),
        }
        if lee_clean is not None and len(pos_view) > 1:
            report["attacks"][name]["lee_upper_bound"] = lee_figures(det, suite, lee_clean, s, cfg)
        if name in fit_views:  # a known attack the refits saw: score them once more without it
            variant = f"without:{name}"
            neg[variant] = neg.get(variant) or suite.scores(neg_view, variant)
            held = suite.scores(pos_view, variant)
            report["leave_one_out"][name] = {
                d: _strip(detection_figures(neg[variant][d], held[d], None, cfg.bootstrap, cfg.seed)) for d in REFITTED
            }
    report["corruptions"] = corruption_figures(det, suite, xo, yo, thresholds, cfg, ccfg.clean_augment)
    report["summary"] = summary(report, cfg)
    if cfg.adaptive_limit > 0:
        ad = balanced_subset(torch.arange(len(ev_y)), ev_y, cfg.adaptive_limit, k)
        report["adaptive"] = robust_report(det, ev_x[ad], ev_y[ad], cfg.adaptive)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    if is_main():  # under torchrun every process computes the report; process 0 writes it
        write_report(report, curves, out)
    return report


def lee_figures(det: Detector, suite: Suite, clean: Tensor, s: AttackSet, cfg: EvalConfig) -> dict[str, Any]:
    """The Lee-faithful Mahalanobis upper bound on one attack (baselines/lee.py): fitted and its noise magnitude chosen
    on that attack itself, two-fold, each image scored by the fold that did not see it, at that fold's own 5%-FPR
    threshold."""
    adv = s.x_adv[s.success]
    pick = torch.randperm(len(adv), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.lee_limit]
    attacked = lee_distances(det.model, suite.ensemble, adv[pick], device=det.device)
    target = det.profiles.meta.get("target_fpr", 0.05)
    s_c, s_a, chosen = cross_fit_per_attack(clean, attacked, target, cfg.seed)
    figs = _strip(detection_figures(torch.from_numpy(s_c), torch.from_numpy(s_a), 0.0, cfg.bootstrap, cfg.seed))
    return figs | {"eps_chosen": [EPS_GRID[e] for e in chosen]}


def check_unseen(unseen: tuple[str, ...], cal: dict[str, Any], selection: tuple[str, ...] = ()) -> None:
    """Refuse, before any attack runs, to report as unseen an attack the served scorer was fitted on or whose figures
    chose its recipe (its profiles' calibration record), or one this evaluation also names as used in selection:
    its figures would be in-distribution figures under an out-of-distribution name. Attacks compare by their method
    (NAME of NAME@SOURCE): the same attack crafted on another network is no unseen method."""
    base = lambda names: {split_name(n)[0] for n in names}  # noqa: E731
    fitted = base([*cal.get("attacks", []), *cal.get("extra_attacks", []), *cal.get("extra_subset_attacks", [])])
    seen = sorted(n for n in unseen if split_name(n)[0] in fitted)
    if seen:
        raise ValueError(
            f"--unseen {','.join(unseen)}: {', '.join(seen)} are in the served scorer's fit (its calibration record "
            f"lists {', '.join(sorted(fitted))}); an unseen attack must be one no fit touched"
        )
    chose_by = base([*cal.get("selection_attacks", []), *cal.get("validation_attacks", []), *selection])
    chose = sorted(n for n in unseen if split_name(n)[0] in chose_by)
    if chose:
        raise ValueError(
            f"--unseen {','.join(unseen)}: {', '.join(chose)} informed a recipe choice (the calibration record or "
            "--selection lists them); report them with --selection, an unseen attack must be one no choice touched"
        )


def served_clean_fpr(
    det: Detector, test: Split, half: Tensor, subset: Tensor, pred: Prediction, rounds: int
) -> dict[str, Any]:
    """The served threshold's flag rate on every clean, correctly classified image of the evaluation half `half`
    (indices into test), `subset` of them already predicted (`pred`): what a user meets, and cheap to measure on all of
    them, where --limit puts the attacks' negatives at 1,000 images (a 95% interval of +-1.4 points at 5%)."""
    rest = half[~torch.isin(half, subset)]
    scores, ok = [pred.scores], [pred.labels == test.y[subset]]
    for i in range(0, len(rest), 2048):  # bounded memory on large images
        idx = rest[i : i + 2048]
        p = det.predict(to_unit_float(test.x[idx]))
        scores.append(p.scores)
        ok.append(p.labels == test.y[idx])
    s, k = torch.cat(scores), torch.cat(ok)
    return flag_rate(s[k], det.threshold, rounds) | {"images": len(half)}


def correct(det: Detector, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The correctly classified images among x and their labels."""
    ok = det.predict(x).labels == y
    return x[ok], y[ok]


def fitted_on(cal: dict[str, Any]) -> str:
    """One sentence: what the served scorer saw when it was fitted."""
    eps = cal.get("config", {}).get("linf_eps")
    text = f"clean images against the successful attacks {', '.join(cal.get('attacks', []))}"
    radial = {"fgsm": "FGSM", "pgd": "PGD", "transfer": "transferred PGD"}
    linf = [radial[a] for a in radial if a in {*cal.get("attacks", []), *cal.get("extra_subset_attacks", [])}]
    if eps and linf:
        text += f" ({', '.join(linf)} at Linf {', '.join(f'{e:g}' for e in eps)} / 255)"
    if cal.get("transfer_source"):
        text += f", transferred ones crafted on {cal['transfer_source']},"
    text += f" on {cal.get('fit_images', '?')} calibration test images"
    if cal.get("extra_fit_images"):
        text += f" and {cal['extra_fit_images']} training images with {', '.join(cal.get('extra_attacks', []))}"
    if cal.get("extra_subset_images"):
        text += f", {cal['extra_subset_images']} of them also with {', '.join(cal['extra_subset_attacks'])}"
    return text


def corruption_figures(
    det: Detector,
    suite: Suite,
    x: Tensor,
    y: Tensor,
    thresholds: dict[str, float],
    cfg: EvalConfig,
    augment: tuple[str, ...],
) -> dict[str, Any]:
    """Per corruption: accuracy on corrupted, once correctly classified images, and each detector's flag rate on the
    ones still correctly classified (false positives on clean but shifted images); whether the fit's clean augmentation
    (`augment`, the recipe's kinds) covers it and whether `dnd select` weighed it."""
    res = {}
    for name in tqdm(cfg.corruptions, desc="corruptions", unit="corruption"):
        xc = corrupt(name, x)
        v = suite.view(xc)
        still = v.pred.labels == y
        sc = suite.scores(v)
        res[name] = {
            "what": CORRUPTIONS[name].what,
            "in_fit_augmentation": CORRUPTIONS[name].kind in augment,
            "in_selection": CORRUPTIONS[name].in_selection,
            "n": len(y),
            "accuracy": round(float(still.float().mean()), 4),
            "fpr": {d: flag_rate(s[still], thresholds[d], cfg.bootstrap) for d, s in sc.items()},
            "flag_rate_all": {d: round(float((s > thresholds[d]).float().mean()), 4) for d, s in sc.items()},
        }
    return res


def summary(r: dict[str, Any], cfg: EvalConfig) -> dict[str, Any]:
    """Per detector: worst AUROC over the known attacks, and over the held-out (leave-one-out, where the detector is
    refitted) and unseen attacks; with the attack it is reached on. None where there is none: an unsupervised
    detector has no leave-one-out refit, so with no unseen attacks (`--unseen ''`) it has no held-out figure."""
    out = {}
    for d in DETECTORS:
        # attacks that never succeeded have no AUROC (None) and no leave-one-out refit
        known = {a: r["attacks"][a]["detectors"][d]["auroc"] for a in cfg.known}
        held = {f"without {a}": v[d]["auroc"] for a, v in r["leave_one_out"].items() if d in v}
        held |= {a: r["attacks"][a]["detectors"][d]["auroc"] for a in (*cfg.selection, *cfg.unseen)}
        known = {a: v for a, v in known.items() if v is not None}
        held = {a: v for a, v in held.items() if v is not None}
        kw, hw = min(known, key=known.get, default=None), min(held, key=held.get, default=None)
        out[d] = {
            "worst_known": known.get(kw),
            "worst_known_on": kw,
            "worst_held_out_or_unseen": held.get(hw),
            "worst_held_out_or_unseen_on": hw,
        }
    return out


def _strip(f: dict[str, Any]) -> dict[str, Any]:
    f.pop("curve", None)
    return f
