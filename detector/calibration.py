"""Test-set splits and calibration of the `path` scorer and its threshold.

The test set is split once, class-balanced and seeded: the *calibration* half fits the scorer's weights and the
threshold; every reported figure comes from the disjoint *evaluation* half. Profiles come from the training set.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .attacks import run_attack
from .data import to_unit_float
from .model import CifarResNet
from .profiles import PathProfiles
from .scoring import PathScorer, calibrate_threshold, path_features
from .stats import collect_gate_paths

SPLIT_SEED = 20190604  # fixed, so that `dnd profiles` and `dnd evaluate` agree on the halves


def shuffled_per_class(y: Tensor, num_classes: int, seed: int) -> list[Tensor]:
    """Each class's indices into y, in a seeded random order (one generator, classes in order)."""
    g = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    return [idx[torch.randperm(len(idx), generator=g)] for idx in per_class]


def split_test(y: Tensor, num_classes: int, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """(calibration indices, evaluation indices): each class's images shuffled (seeded) and cut in half."""
    per_class = shuffled_per_class(y, num_classes, seed)
    cal = torch.cat([idx[: len(idx) // 2] for idx in per_class])
    ev = torch.cat([idx[len(idx) // 2:] for idx in per_class])
    return cal.sort().values, ev.sort().values


def balanced_subset(idx: Tensor, y: Tensor, n: int, num_classes: int) -> Tensor:
    """The first ceil(n / K) indices of each class within idx (idx is already shuffled per class), n at most."""
    if n <= 0 or n >= len(idx):
        return idx
    per = -(-n // num_classes)
    picked = torch.cat([idx[y[idx] == c][:per] for c in range(num_classes)])
    return picked.sort().values[:n] if len(picked) > n else picked.sort().values


def fit_threshold_split(y: Tensor, num_classes: int, seed: int = 0, threshold_share: float = 0.4
                        ) -> tuple[Tensor, Tensor]:
    """(fit indices, threshold indices) into calibration labels y: each class's images shuffled (seeded), the first
    `threshold_share` of them for the threshold, the rest for fitting the scorer."""
    per_class = shuffled_per_class(y, num_classes, seed)
    thr = torch.cat([idx[: round(len(idx) * threshold_share)] for idx in per_class])
    fit = torch.cat([idx[round(len(idx) * threshold_share):] for idx in per_class])
    return fit, thr


def train_sample(y: Tensor, n: int, num_classes: int, seed: int = 1) -> Tensor:
    """Indices of a class-balanced, seeded sample of n training images (labels y), for the scorer's fit data."""
    return balanced_subset(torch.cat(shuffled_per_class(y, num_classes, seed)), y, n, num_classes)


def path_feature_set(model: CifarResNet, profiles: PathProfiles, x: Tensor, y: Tensor | None = None,
                     device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Path features of images x, one forward pass. With labels y, only the correctly classified images count.
    Returns (kept: (N,) bool, features of the kept images)."""
    logits, z, s = collect_gate_paths(model, x, device=device)
    pred = logits.argmax(1).cpu()
    kept = pred == y if y is not None else torch.ones(len(pred), dtype=torch.bool)
    gates = [sl[kept] for sl in s] if profiles.gate_mean is not None else None
    return kept, path_features([zl[kept] for zl in z], pred[kept], profiles.freq, s=gates, gate_mean=profiles.gate_mean)


def attacked_path_features(model: CifarResNet, profiles: PathProfiles, x: Tensor, y: Tensor, attacks: list[str],
                           device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Path features of the correctly classified images among x ("clean") and of each attack's successful
    adversarial images on them (one entry per attack name): the rows the scorer studies fit and score."""
    kept, clean = path_feature_set(model, profiles, x, y, device)
    out = {"clean": clean}
    for name in attacks:
        s = run_attack(model, name, x[kept], y[kept], device=device)
        out[name] = path_feature_set(model, profiles, s.x_adv[s.success], device=device)[1]
    return out


def calibrate(model: CifarResNet, profiles: PathProfiles, x: Tensor, y: Tensor, attacks: list[str],
              target_fpr: float = 0.05, device: str | torch.device = "cpu", seed: int = 0,
              threshold_share: float = 0.4, trees: bool = True,
              extra_fit: tuple[Tensor, Tensor] | None = None, extra_attacks: list[str] | None = None,
              extra_subset: tuple[int, list[str]] | None = None,
              families: list[list[str]] | None = None, log_prior: list[float] | None = None) -> PathProfiles:
    """Fit the `path` scorer and its threshold on calibration images x (N, 3, 32, 32), y (N,).

    The images are cut (class-balanced, seeded) into a *fit* part and a *threshold* part. The scorer is fitted on the
    fit part: clean, correctly classified images against the successful `attacks` on them. The threshold is set at
    `target_fpr` on the clean, correctly classified images of the threshold part, which the scorer never saw: set on
    its own training images, it flagged 8.7% instead of 5% of unseen clean images (measured, 708 features).
    extra_fit = (x, y) adds more images (e.g. training images) to the fit part, attacked with `extra_attacks` (default:
    `attacks`): the trees are data-hungry (745 features, ~2,600 clean calibration images), and the threshold part
    stays test images only. extra_subset = (n, names): n class-balanced, correctly classified ones of those extra
    images are also attacked with `names` (CW and DeepFool cost 0.05-0.25 s per image on 2 cores: hours for all).
    families: attack names per tree model (default: one model on all attacks), log_prior: their log prior weights in
    the mixture score (default zeros; see PathScorer).
    Returns the profiles with scorer, threshold and a record of what was used."""
    x = to_unit_float(x)
    fit_idx, thr_idx = fit_threshold_split(y, model.cfg.num_classes, seed, threshold_share)

    fit_kept, clean = path_feature_set(model, profiles, x[fit_idx], y[fit_idx], device)
    thr_kept, thr_clean = path_feature_set(model, profiles, x[thr_idx], y[thr_idx], device)
    fit_ok, thr_ok = fit_idx[fit_kept], thr_idx[thr_kept]
    fit_sets = [(x[fit_ok], y[fit_ok], attacks)]
    extra: dict[str, Any] = {}
    if extra_fit is not None:
        ex_x, ex_y = to_unit_float(extra_fit[0]), extra_fit[1]
        ex_kept, ex_clean = path_feature_set(model, profiles, ex_x, ex_y, device)
        clean = torch.cat([clean, ex_clean])
        ex_attacks = attacks if extra_attacks is None else extra_attacks
        fit_sets.append((ex_x[ex_kept], ex_y[ex_kept], ex_attacks))
        extra = {"extra_fit_images": len(ex_y), "n_extra_clean": int(ex_kept.sum()), "extra_attacks": ex_attacks}
        if extra_subset is not None and extra_subset[0] > 0:
            n_sub, sub_names = extra_subset
            sub = balanced_subset(torch.nonzero(ex_kept).squeeze(1), ex_y, n_sub, model.cfg.num_classes)
            sub_names = [n for n in sub_names if n not in ex_attacks]  # the rest already ran on every extra image
            fit_sets.append((ex_x[sub], ex_y[sub], sub_names))
            extra |= {"extra_subset_images": len(sub), "extra_subset_attacks": sub_names}
    attacked: dict[str, list[Tensor]] = {}
    rates = {}
    all_names = list(dict.fromkeys(n for _, _, names in fit_sets for n in names))
    for name in tqdm(all_names, desc="calibration attacks", unit="attack"):
        ok = succ = 0
        for xs, ys, names in fit_sets:
            if name not in names:
                continue
            s = run_attack(model, name, xs, ys, seed=seed, device=device)
            ok, succ = ok + len(s.success), succ + int(s.success.sum())
            attacked.setdefault(name, []).append(path_feature_set(model, profiles, s.x_adv[s.success], device=device)[1])
        rates[name] = round(succ / max(ok, 1), 4)
    rows = {name: torch.cat(v) for name, v in attacked.items()}
    # only the attacks that ran; PathScorer.fit leaves out a family left empty (e.g. --calib-attacks fgsm,pgd) and its prior
    fams = [list(all_names)] if families is None else [[n for n in f if n in rows] for f in families]
    scorer = PathScorer.fit(clean, rows, fams, log_prior, trees=trees)
    thr_scores = scorer.score(thr_clean)
    threshold = calibrate_threshold(thr_scores, target_fpr)
    # the differentiable stand-in an adaptive attacker descends on, thresholded at the same FPR
    scorer = replace(scorer, surrogate_threshold=calibrate_threshold(scorer.surrogate(thr_clean), target_fpr))
    record: dict[str, Any] = {"split_seed": SPLIT_SEED, "images": len(y), "fit_images": len(fit_idx),
                              "threshold_images": len(thr_idx), "n_clean": len(clean), "n_attacked": sum(map(len, rows.values())),
                              "n_threshold_clean": len(thr_ok), "attacks": attacks, "attack_success_rates": rates,
                              "scorer": "trees" if trees else "linear", **extra,
                              **({"families": [f for f in fams if f], "family_log_prior": scorer.log_prior.tolist()}
                                 if trees else {}),
                              "fpr_achieved": round(float((thr_scores > threshold).float().mean()), 4)}
    meta = {**profiles.meta, "threshold": threshold, "target_fpr": target_fpr, "calibration": record}
    return PathProfiles(profiles.freq, profiles.counts, meta, scorer, profiles.gate_mean)
