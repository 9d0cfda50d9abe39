"""Scorer study: do naive-Bayes path likelihoods (`likelihood_features`) help the trees, mostly on CW / DeepFool?

Collects raw eval-time paths (not features, so any feature set can be screened) of the calibration half's fit and
threshold parts (clean, FGSM, PGD, CW, DeepFool on the correctly classified images) and of N_TRAIN class-balanced
training images (clean, FGSM, PGD; CW and DeepFool on N_SUB of them): the mix `dnd profiles` fits on, with fewer
training images. Then fits the trees on fit part + training rows twice, with the feature set before the likelihood
columns (`without_likelihoods`) and with the full one, and prints AUROC on the threshold part
(clean vs each attack there; the evaluation half is not touched), a paired bootstrap 95% interval of the difference
(threshold images resampled, fitted scorers fixed), and the AUROC of the whole-path likelihood margin alone.

usage: python scripts/scorer_likelihood_study.py BUNDLE CACHE.pt [N_TRAIN=10000] [N_SUB=2000]
       (~37 min to collect on 2 cores, DeepFool most of it; ~3 min per run once CACHE.pt exists)
"""
import os
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detector.attacks import run_attack
from detector.bundle import load_model
from detector.calibration import balanced_subset
from detector.profiles import load_profiles
from detector.stats import collect_paths
from study_data import FOUR, cached_features, calibration_parts, mix_scores, paired_interval, strip_likelihoods, thr_labels

torch.set_num_threads(2)
bundle, cache = sys.argv[1], sys.argv[2]
n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
n_sub = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
model, prof = load_model(bundle), load_profiles(bundle)


def paths(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits, z = collect_paths(model, x)
    return torch.cat(z, 1), logits.argmax(1)  # (N, sum C_l) bool, (N,)


def part(x: torch.Tensor, y: torch.Tensor, attacks: list[str], sub_attacks: list[str] = (), n: int = 0) -> dict:
    """{name: (paths, predictions, true labels)} for the clean correctly classified images and each successful attack."""
    z, pred = paths(x)
    kept = pred == y
    out, xk, yk = {"clean": (z[kept], pred[kept], y[kept])}, x[kept], y[kept]
    sub = balanced_subset(torch.arange(len(yk)), yk, n, 10) if n else None
    for a in [*attacks, *sub_attacks]:
        xs, ys = (xk, yk) if a in attacks else (xk[sub], yk[sub])
        s = run_attack(model, a, xs, ys, seed=0)
        za, pa = paths(s.x_adv[s.success])
        out[a] = (za, pa, ys[s.success])
        print(f"  {a}: {len(pa)} of {len(ys)} attacked", flush=True)
    return out


if os.path.exists(cache):
    sets = torch.load(cache)
else:
    parts = calibration_parts(n_train=n_train)
    sets = {}
    for name in ("thr", "fit"):
        print(name, flush=True)
        sets[name] = part(*parts[name], FOUR)
    print("train", flush=True)
    sets["train"] = part(*parts["train"], ["fgsm", "pgd"], ["cw", "deepfool"], n_sub)
    torch.save(sets, cache)

F = cached_features(sets, prof.freq)
y_of = thr_labels(F)
s0 = mix_scores(strip_likelihoods(F, prof.freq), "without likelihoods")
s1 = mix_scores(F, "with likelihoods")
rng = np.random.default_rng(0)
for a in FOUR:
    lo, hi = paired_interval(s0, s1, a, rng)
    margin = -torch.cat([F["thr"]["clean"][:, -1], F["thr"][a][:, -1]]).numpy()  # low margin = attack
    print(f"{a:8s} difference 95% interval [{lo:+.4f}, {hi:+.4f}] | "
          f"whole-path likelihood margin alone: AUROC {roc_auc_score(y_of[a], margin):.4f}", flush=True)
