"""Scorer study: does fitting the `path` scorer on attacked *training* images as well help?

The calibration half of the test set is cut as `dnd profiles` cuts it (fit part 60%, threshold part 40%). Scorers are
fitted on (a) the fit part only, (b) fit part + n class-balanced training images (n = 10,000, 20,000, N_TRAIN: random
shares of the N_TRAIN collected), (c) the training images only, each as clean vs FGSM + PGD on the correctly classified ones; every AUROC is measured on the threshold part
(clean vs FGSM / PGD / both on it), which none of them saw. The evaluation half is not touched.

usage: python scripts/scorer_train_study.py BUNDLE [N_TRAIN=10000] [CACHE.pt] [--without-likelihoods]   (~10 min on 2 cores;
       the flag: the 708 features the study figures (docs/detector-studies.md) were measured on, before session 10)
"""
import os
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detector.bundle import load_model
from detector.calibration import attacked_path_features
from detector.profiles import load_profiles
from detector.scoring import PathScorer
from study_data import SINGLE_TREE_PARAMS, calibration_parts, strip_likelihoods, take_flag

torch.set_num_threads(2)
OLD = take_flag("--without-likelihoods")  # the 708 features of the figures measured before session 10
bundle = sys.argv[1]
n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
cache = sys.argv[3] if len(sys.argv) > 3 else None
model, prof = load_model(bundle), load_profiles(bundle)


def feats(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Path features of the clean correctly classified images and of the successful FGSM / PGD attacks on them."""
    out = attacked_path_features(model, prof, x, y, ["fgsm", "pgd"])
    for a in ("fgsm", "pgd"):
        print(f"  {a}: {len(out[a])} of {len(out['clean'])} attacked", flush=True)
    return out


if cache and os.path.exists(cache):
    sets = torch.load(cache)
else:
    sets = {}
    for part, (x, y) in calibration_parts(n_train=n_train).items():
        print(part, len(y), "images", flush=True)
        sets[part] = feats(x, y)
    if cache:
        torch.save(sets, cache)

if OLD:
    sets = strip_likelihoods(sets, prof.freq)


def auroc(scorer: PathScorer, attack: str) -> float:
    s0, s1 = scorer.score(sets["thr"]["clean"]), scorer.score(sets["thr"][attack])
    return roc_auc_score(np.r_[np.zeros(len(s0)), np.ones(len(s1))], torch.cat([s0, s1]).double().numpy())


def pool(parts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.cat([sets[p]["clean"] for p in parts])
    return clean, torch.cat([sets[p][a] for p in parts for a in ("fgsm", "pgd")])


def train_share(n: int) -> None:
    """Keep a random n / n_train share of the training rows (clean and attacked alike)."""
    g = torch.Generator().manual_seed(0)
    sets[f"train{n}"] = {k: v[torch.randperm(len(v), generator=g)[: round(len(v) * n / n_train)]]
                         for k, v in sets["train"].items()}


variants = [("fit part only", ["fit"])]
for n in sorted({min(10000, n_train), min(20000, n_train), n_train}):
    train_share(n)
    variants.append((f"fit part + {n} train", ["fit", f"train{n}"]))
variants.append((f"{n_train} train only", ["train"]))
for name, parts in variants:
    clean, attacked = pool(parts)
    sc = PathScorer.fit(clean, {"attacked": attacked}, tree_params=SINGLE_TREE_PARAMS)
    lin = PathScorer(sc.mean, sc.scale, sc.coef, sc.intercept)
    print(f"{name:28s} n_clean {len(clean):6d} n_attacked {len(attacked):6d} | trees FGSM {auroc(sc, 'fgsm'):.4f} "
          f"PGD {auroc(sc, 'pgd'):.4f} | logistic FGSM {auroc(lin, 'fgsm'):.4f} PGD {auroc(lin, 'pgd'):.4f}", flush=True)
