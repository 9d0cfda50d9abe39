"""Test-set splits and calibration of the `path` scorer and its threshold.

The test set is split once, class-balanced and seeded: the *calibration* half fits the scorer's weights and the
threshold; every reported figure comes from the disjoint *evaluation* half. Profiles come from the training set.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .attacks import run_attack
from .data import to_unit_float
from .model import CifarResNet
from .profiles import PathProfiles
from .scoring import PathScorer, calibrate_threshold, path_features
from .stats import collect_paths

SPLIT_SEED = 20190604  # fixed, so that `dnd profiles` and `dnd evaluate` agree on the halves


def split_test(y: Tensor, num_classes: int, seed: int = SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """(calibration indices, evaluation indices): each class's images shuffled (seeded) and cut in half."""
    g = torch.Generator().manual_seed(seed)
    cal, ev = [], []
    for c in range(num_classes):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        cal.append(idx[: len(idx) // 2])
        ev.append(idx[len(idx) // 2:])
    return torch.cat(cal).sort().values, torch.cat(ev).sort().values


def balanced_subset(idx: Tensor, y: Tensor, n: int, num_classes: int) -> Tensor:
    """The first ceil(n / K) indices of each class within idx (idx is already shuffled per class), n at most."""
    if n <= 0 or n >= len(idx):
        return idx
    per = -(-n // num_classes)
    picked = torch.cat([idx[y[idx] == c][:per] for c in range(num_classes)])
    return picked.sort().values[:n] if len(picked) > n else picked.sort().values


def path_feature_set(model: CifarResNet, profiles: PathProfiles, x: Tensor, device: str | torch.device = "cpu") -> Tensor:
    logits, z = collect_paths(model, x, device=device)
    return path_features(z, logits.argmax(1), profiles.freq)


def calibrate(model: CifarResNet, profiles: PathProfiles, x: Tensor, y: Tensor, attacks: list[str],
              target_fpr: float = 0.05, device: str | torch.device = "cpu", seed: int = 0) -> PathProfiles:
    """Fit the `path` scorer on calibration images x (N, 3, 32, 32), y (N,): clean, correctly classified images
    against the successful attacks `attacks` on them; then the threshold at `target_fpr` on the clean ones.
    Returns the profiles with scorer, threshold and a record of what was used."""
    x = to_unit_float(x)
    logits, _ = collect_paths(model, x, device=device)
    ok = logits.argmax(1).cpu() == y
    clean = path_feature_set(model, profiles, x[ok], device)
    attacked, rates = [], {}
    for name in tqdm(attacks, desc="calibration attacks", unit="attack"):
        s = run_attack(model, name, x[ok], y[ok], seed=seed, device=device)
        rates[name] = round(s.success_rate, 4)
        attacked.append(path_feature_set(model, profiles, s.x_adv[s.success], device))
    attacked_all = torch.cat(attacked)
    scorer = PathScorer.fit(clean, attacked_all)
    clean_scores = scorer.score(clean)
    threshold = calibrate_threshold(clean_scores, target_fpr)
    record: dict[str, Any] = {"split_seed": SPLIT_SEED, "images": len(y), "n_clean": int(ok.sum()),
                              "n_attacked": len(attacked_all), "attacks": attacks, "attack_success_rates": rates,
                              "fpr_achieved": round(float((clean_scores > threshold).float().mean()), 4)}
    meta = {**profiles.meta, "threshold": threshold, "target_fpr": target_fpr, "calibration": record}
    return PathProfiles(profiles.freq, profiles.counts, meta, scorer)
