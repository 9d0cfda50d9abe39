"""Calibration of the `path` scorer and its threshold: one frozen recipe (`CalibrationConfig`, detector/recipe.py),
one function.

The calibration half of the test set (detector/splits.py) is cut, class-balanced and seeded, into a *fit* part and a
*threshold* part. The scorer is fitted on clean, correctly classified images of the fit part (plus, optionally,
training images) against the successful attacks on them; the threshold is set at the target false-positive rate on
the clean images of the threshold part, which the scorer never saw: trees score their own training images lower
than new ones, so a threshold set on them would flag more than the target rate of unseen clean images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .attack_cache import AttackCache, tensor_sha256
from .attacks import attack_spec, needs_run_source, run_attack, split_name
from .consistency import TRANSFORMS
from .corruptions import random_corruptions
from .data import to_unit_float
from .inputs import inputs_of_images
from .networks import GatedNetwork
from .profiles import PathProfiles
from .recipe import CalibrationConfig
from .scorer import PathScorer, calibrate_threshold, wilson_interval
from .shift_threshold import flagged, shift_bounded_threshold, shifted_scores
from .splits import SPLIT_SEED, balanced_subset, fit_threshold_split
from .transfer import TransferSources
from .trees import TREE_PARAMS
from .validation import validation_figures


def path_feature_set(
    model: GatedNetwork, profiles: PathProfiles, x: Tensor, y: Tensor | None = None, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor]:
    """Scorer inputs of images x (detector/inputs.py: one stacked forward per batch). With labels y, only the
    correctly classified images count. Returns (kept: (N,) bool, inputs of the kept images)."""
    logits, inputs = inputs_of_images(model, profiles, x, device=device)
    pred = logits.argmax(1)
    kept = pred == y if y is not None else torch.ones(len(pred), dtype=torch.bool)
    return kept, inputs[kept]


FitSet = tuple[Tensor, Tensor, list[str]]  # correctly classified images, labels, the attacks to run on them


def fit_sets(
    model: GatedNetwork,
    profiles: PathProfiles,
    x: Tensor,
    y: Tensor,
    fit_idx: Tensor,
    cfg: CalibrationConfig,
    train: tuple[Tensor, Tensor] | None,
    device: str | torch.device,
) -> tuple[Tensor, list[FitSet], dict[str, Any]]:
    """Clean fit features, the image sets to attack, and their record: the calibration fit part with cfg.attacks, the
    training images with cfg.train_attacks, a class-balanced subset of them with cfg.train_subset_attacks."""
    kept, clean = path_feature_set(model, profiles, x[fit_idx], y[fit_idx], device)
    ok = fit_idx[kept]
    run = cfg.attacks_run()
    sets: list[FitSet] = [(x[ok], y[ok], [n for n in cfg.attacks if n in run])]
    record: dict[str, Any] = {}
    n_aug = 0
    if cfg.clean_augment:
        augmented = random_corruptions(x[ok], cfg.seed, cfg.clean_augment)
        aug = path_feature_set(model, profiles, augmented, y[ok], device)[1]
        clean, n_aug = torch.cat([clean, aug]), len(aug)
    if train is not None:
        tx, ty = to_unit_float(train[0]), train[1]
        t_kept, t_clean = path_feature_set(model, profiles, tx, ty, device)
        clean = torch.cat([clean, t_clean])
        if cfg.clean_augment:
            augmented = random_corruptions(tx[t_kept], cfg.seed + 1, cfg.clean_augment)
            aug = path_feature_set(model, profiles, augmented, ty[t_kept], device)[1]
            clean, n_aug = torch.cat([clean, aug]), n_aug + len(aug)
        names = [n for n in cfg.train_attacks if n in run]
        sets.append((tx[t_kept], ty[t_kept], names))
        record = {"extra_fit_images": len(ty), "n_extra_clean": int(t_kept.sum()), "extra_attacks": names}
        if cfg.train_subset > 0:
            sub = balanced_subset(torch.nonzero(t_kept).squeeze(1), ty, cfg.train_subset, model.cfg.num_classes)
            names = [n for n in cfg.train_subset_attacks if n in run and n not in cfg.train_attacks]  # the rest ran
            sets.append((tx[sub], ty[sub], names))
            record |= {"extra_subset_images": len(sub), "extra_subset_attacks": names}
    record["n_augmented_clean"] = n_aug
    return clean, sets, record


def fit_attack(
    model: GatedNetwork,
    name: str,
    x: Tensor,
    y: Tensor,
    cfg: CalibrationConfig,
    device: str | torch.device,
    source: torch.nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """(successful adversarial images, success mask) of `name` on x; the fit's Linf attacks (AttackSpec.fit_radii) at
    cfg.linf_eps, each image at one radius (a seeded random split of x into len(linf_eps) parts). A transferred
    attack is crafted on `source`."""
    spec = attack_spec(name)
    if not spec.fit_radii or not cfg.linf_eps:
        s = run_attack(model, name, x, y, seed=cfg.seed, device=device, source=source)
        return s.x_adv[s.success], s.success
    part = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed)) % len(cfg.linf_eps)
    advs, success = [], torch.zeros(len(x), dtype=torch.bool)
    for k, eps in enumerate(cfg.linf_eps):
        idx = torch.nonzero(part == k).flatten()
        over = {"eps": eps / 255} | ({"alpha": eps / 255 / 4} if "alpha" in spec.params else {})
        s = run_attack(model, name, x[idx], y[idx], seed=cfg.seed, device=device, source=source, **over)
        advs.append(s.x_adv[s.success])
        success[idx] = s.success  # the images are correctly classified already, so none is dropped
    return torch.cat(advs), success


def attack_rows(
    model: GatedNetwork,
    profiles: PathProfiles,
    sets: list[FitSet],
    cfg: CalibrationConfig,
    device: str | torch.device,
    sources: TransferSources | None = None,
    cache: AttackCache | None = None,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Per attack name, the path features of its successful adversarial images over every set, and its success rate.
    Transferred attacks are crafted on `sources`. With a cache, each (attack, image set) result is kept on disk and
    reused by a re-run of the same recipe."""
    rows: dict[str, list[Tensor]] = {}
    rates = {}
    cache = cache or AttackCache(None, {})
    network = sources.network if sources is not None else lambda name: None
    names = list(dict.fromkeys(n for _, _, ns in sets for n in ns))
    for name in tqdm(names, desc="calibration attacks", unit="attack"):
        ok = succ = 0
        for i, (xs, ys, ns) in enumerate(sets):
            if name not in ns:
                continue
            t = cache.tensors(
                f"{name}-set{i}",
                lambda n=name, xs=xs, ys=ys: dict(
                    zip(("x_adv", "success"), fit_attack(model, n, xs, ys, cfg, device, network(n)), strict=True)
                ),
                images=tensor_sha256(xs),
                labels=tensor_sha256(ys),
                radii=",".join(map(str, cfg.linf_eps)),
                **(sources.key(name) if sources is not None and split_name(name)[1] else {}),
            )
            adv, success = t["x_adv"], t["success"]
            ok, succ = ok + len(success), succ + int(success.sum())
            rows.setdefault(name, []).append(path_feature_set(model, profiles, adv, device=device)[1])
        rates[name] = round(succ / max(ok, 1), 4)
    return {name: torch.cat(v) for name, v in rows.items()}, rates


def calibrate(
    model: GatedNetwork,
    profiles: PathProfiles,
    x: Tensor,
    y: Tensor,
    cfg: CalibrationConfig = CalibrationConfig(),
    train: tuple[Tensor, Tensor] | None = None,
    device: str | torch.device = "cpu",
    cache: AttackCache | None = None,
) -> PathProfiles:
    """Fit the `path` scorer and its threshold on calibration images x (N, 3, S, S), y (N,); `train` = (x, y)
    training images to add to the fit data (cfg.train_images of them are expected; the caller samples them).
    `cache` keeps the fit's attack results (most of the run's time) so that an interrupted run resumes.
    Returns the profiles with scorer, threshold and a record of what was used."""
    cfg.check()
    x = to_unit_float(x)
    profiles = replace(profiles, meta={**profiles.meta, "features": cfg.spec.to_dict()})  # what the scorer reads
    fit_idx, thr_idx = fit_threshold_split(y, model.cfg.num_classes, cfg.seed, cfg.threshold_share)
    clean, sets, extra = fit_sets(model, profiles, x, y, fit_idx, cfg, train if cfg.train_images > 0 else None, device)
    # crafted on --source: the transferred attacks that name no source of their own (NAME@SOURCE)
    transfer = any(needs_run_source(n) for n in [*cfg.attacks_run(), *cfg.validation_attacks])
    sources = TransferSources(cfg.source, model.cfg.classes, device)
    rows, rates = attack_rows(model, profiles, sets, cfg, device, sources, cache)
    # a family none of whose attacks ran (e.g. attacks=fgsm,pgd without the training subset) gets no model
    fams = [[n for n in f if n in rows] for f in cfg.families]
    trees = cfg.scorer == "trees"
    tree_params = {**TREE_PARAMS, "max_iter": cfg.tree_iterations}
    scorer = PathScorer.fit(clean, rows, fams, list(cfg.family_log_prior), trees=trees, tree_params=tree_params)
    thr_kept, thr_clean = path_feature_set(model, profiles, x[thr_idx], y[thr_idx], device)
    thr_scores = scorer.score(thr_clean)

    def score_correct(xs: Tensor, ys: Tensor) -> Tensor:
        return scorer.score(path_feature_set(model, profiles, xs, ys, device)[1])

    shifted = shifted_scores(score_correct, x[thr_idx][thr_kept], y[thr_idx][thr_kept])
    threshold, bound_by = shift_bounded_threshold(thr_scores, shifted, cfg.target_fpr, cfg.max_shift_flagged)
    n_flagged = int((thr_scores > threshold).sum())
    fpr = n_flagged / len(thr_scores)
    # how far the served FPR may sit from fpr on unseen clean images: the threshold part's size sets it (±1 point at
    # 5% needs some 1,800 images)
    lo, hi = wilson_interval(n_flagged, len(thr_scores))
    # the differentiable stand-in an adaptive attacker descends on, thresholded at the same share of clean images
    surrogate_fpr = cfg.target_fpr if bound_by == "clean" else fpr
    scorer = replace(scorer, surrogate_threshold=calibrate_threshold(scorer.surrogate(thr_clean), surrogate_fpr))

    def attack(name: str, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        s = run_attack(model, name, xs, ys, seed=cfg.seed, device=device, source=sources.network(name))
        return s.x_adv, s.success

    validation = validation_figures(
        cfg.validation_attacks,
        attack,
        lambda xs: scorer.score(path_feature_set(model, profiles, xs, device=device)[1]),
        x[thr_idx][thr_kept],
        y[thr_idx][thr_kept],
        thr_scores,
        threshold,
        cache or AttackCache(None, {}),
    )
    record: dict[str, Any] = {
        "split_seed": SPLIT_SEED,
        "images": len(y),
        "fit_images": len(fit_idx),
        "threshold_images": len(thr_idx),
        "n_clean": len(clean),
        "n_attacked": sum(map(len, rows.values())),
        "n_threshold_clean": int(thr_kept.sum()),
        "attacks": [n for n in cfg.attacks if n in cfg.attacks_run()],
        "selection_attacks": list(cfg.selection_attacks),
        **({"transfer_source": cfg.source} if transfer else {}),
        "attack_success_rates": rates,
        "scorer": cfg.scorer,
        "tree_iterations": cfg.tree_iterations,
        "features": {"families": cfg.spec.families(), "transforms": {t: TRANSFORMS[t][2] for t in cfg.transforms}},
        **extra,
        **({"families": [f for f in fams if f], "family_log_prior": scorer.log_prior.tolist()} if trees else {}),
        "fpr_achieved": round(fpr, 4),
        "fpr_interval": [round(lo, 4), round(hi, 4)],  # Wilson 95% on the threshold part
        "threshold_bound_by": bound_by,  # "clean", or the corruption whose shift limit raised it
        "threshold_shift_flagged": flagged(shifted, threshold),  # threshold part, still correctly classified
        **({"validation_attacks": list(cfg.validation_attacks), "validation": validation} if validation else {}),
        "config": cfg.to_dict(),
    }
    meta = {**profiles.meta, "threshold": threshold, "target_fpr": cfg.target_fpr, "calibration": record}
    return PathProfiles(profiles.freq, profiles.counts, meta, scorer, profiles.gate_mean)
