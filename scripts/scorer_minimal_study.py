"""Scorer study: can the trees also learn the minimal-perturbation attacks (CW, DeepFool) without losing FGSM / PGD?

Reads the cache of scripts/scorer_train_study.py (clean / FGSM / PGD path features of the calibration half's fit and
threshold parts and of the training images), adds CW and DeepFool on both calibration parts (at most N_FIT fit images,
class-balanced; DeepFool runs ~3 images/s on 2 cores), and fits the trees on
  (a) fit part FGSM + PGD + training FGSM + PGD (the shipped scorer),
  (b) the same + fit part CW + DeepFool, (b') with those rows repeated 10x (a weight: they are ~1,100 each
      against ~28,000 FGSM and PGD),
  (c) fit part only, all four attacks;
and with N_TRAIN_MIN > 0, CW and DeepFool also on that many class-balanced training images (another seeded sample
than the cache's; ~0.2 s per image and attack on 2 cores):
  (d) (b) + training CW + DeepFool, (d') with every CW / DeepFool row repeated 5x.
Every AUROC is on the threshold part (clean vs each attack on it). The evaluation half is not touched.

usage: python scripts/scorer_minimal_study.py BUNDLE CACHE.pt [N_FIT=1300] [N_TRAIN_MIN=0] [--without-likelihoods]
(~25 min + ~7 min per 1,000 training images on 2 cores; the flag: the 708 features the figures in
docs/detector-studies.md were measured on, before session 10)
"""
import os
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detector.bundle import load_model
from detector.calibration import attacked_path_features, balanced_subset, fit_threshold_split, split_test, train_sample
from detector.data import load_split, to_unit_float
from detector.profiles import load_profiles
from detector.scoring import PathScorer
from study_data import SINGLE_TREE_PARAMS, strip_likelihoods, take_flag

torch.set_num_threads(2)
OLD = take_flag("--without-likelihoods")  # the 708 features of the figures measured before session 10
bundle, cache = sys.argv[1], sys.argv[2]
n_fit = int(sys.argv[3]) if len(sys.argv) > 3 else 1300
n_train_min = int(sys.argv[4]) if len(sys.argv) > 4 else 0
model, prof = load_model(bundle), load_profiles(bundle)
sets = torch.load(cache)


def minimal(part: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """CW and DeepFool path features on the correctly classified images among x (the clean rows are dropped: the
    cache already holds them where they are used)."""
    out = attacked_path_features(model, prof, x, y, ["cw", "deepfool"])
    for a in ("cw", "deepfool"):
        print(part, a, f"{len(out[a])} of {len(out['clean'])} attacked", flush=True)
    return {a: out[a] for a in ("cw", "deepfool")}


extra_cache = cache.replace(".pt", "-minimal.pt")
if os.path.exists(extra_cache):
    sets |= torch.load(extra_cache)
else:
    test = load_split(".data", "test")
    cal, _ = split_test(test.y, 10)
    xc, yc = to_unit_float(test.x[cal]), test.y[cal]
    fit_idx, thr_idx = fit_threshold_split(yc, 10)  # the cut detector.calibration.calibrate makes
    fit_idx = balanced_subset(fit_idx, yc, n_fit, 10)
    extra = {part: minimal(part, xc[idx], yc[idx]) for part, idx in (("fit_min", fit_idx), ("thr_min", thr_idx))}
    torch.save(extra, extra_cache)
    sets |= extra

train_cache = cache.replace(".pt", f"-train-minimal-{n_train_min}.pt")
if n_train_min and os.path.exists(train_cache):
    sets |= torch.load(train_cache)
elif n_train_min:
    train = load_split(".data", "train")
    idx = train_sample(train.y, n_train_min, 10, seed=2)
    xt, yt = to_unit_float(train.x[idx]), train.y[idx]
    extra = {"train_min": minimal("train_min", xt, yt)}
    torch.save(extra, train_cache)
    sets |= extra

if OLD:
    sets = strip_likelihoods(sets, prof.freq)


def auroc(scorer: PathScorer, attack: str) -> float:
    adv = sets["thr_min"][attack] if attack in ("cw", "deepfool") else sets["thr"][attack]
    s0, s1 = scorer.score(sets["thr"]["clean"]), scorer.score(adv)
    return roc_auc_score(np.r_[np.zeros(len(s0)), np.ones(len(s1))], torch.cat([s0, s1]).double().numpy())


fp = [sets["fit"]["fgsm"], sets["fit"]["pgd"]]
tr = [sets["train"]["fgsm"], sets["train"]["pgd"]]
mn = [sets["fit_min"]["cw"], sets["fit_min"]["deepfool"]]
variants = {"fit FGSM+PGD + train FGSM+PGD (shipped)": ([sets["fit"]["clean"], sets["train"]["clean"]], fp + tr),
            "  + fit CW+DeepFool": ([sets["fit"]["clean"], sets["train"]["clean"]], fp + tr + mn),
            "  + fit CW+DeepFool, each repeated 10x": ([sets["fit"]["clean"], sets["train"]["clean"]], fp + tr + mn * 10),
            "fit part only, all four": ([sets["fit"]["clean"]], fp + mn)}
if n_train_min:
    mt = mn + [sets["train_min"]["cw"], sets["train_min"]["deepfool"]]
    variants |= {f"  + fit and {n_train_min} train CW+DeepFool": ([sets["fit"]["clean"], sets["train"]["clean"]], fp + tr + mt),
                 f"  + fit and {n_train_min} train CW+DeepFool, 5x": ([sets["fit"]["clean"], sets["train"]["clean"]], fp + tr + mt * 5)}
for name, (clean, attacked) in variants.items():
    sc = PathScorer.fit(torch.cat(clean), {"attacked": torch.cat(attacked)}, tree_params=SINGLE_TREE_PARAMS)
    print(f"{name:42s} " + " ".join(f"{a} {auroc(sc, a):.4f}" for a in ("fgsm", "pgd", "cw", "deepfool")), flush=True)
