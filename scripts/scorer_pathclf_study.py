"""Scorer study: does a discriminative path classifier (z -> class, multinomial logistic on all gated filters) add to
the trees, mostly on CW / DeepFool?

The naive-Bayes likelihood margin (session 10) treats filters as independent; a linear classifier fitted on paths
weighs them jointly. It is fitted on correctly classified training images that the scorer never sees (those outside
the `dnd profiles --calib-train 30000` sample), and gives three path-only columns: the log-probability of the predicted
class c, its logit margin over the best other class, and the entropy. Uses the path cache of
scripts/scorer_likelihood_study.py (same fit / threshold / training rows), fits the trees with and without the new
columns, and prints AUROC on the threshold part (the evaluation half is not touched), paired bootstrap 95% intervals
of the difference and each new column's AUROC alone.

usage: python scripts/scorer_pathclf_study.py BUNDLE CACHE.pt CLF_PATHS.pt [WEIGHT_DECAY=1e-4]
       (CACHE.pt from scorer_likelihood_study.py; CLF_PATHS.pt is made here on first use: one forward pass over 20,000
       training images)
"""
import os
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detector.bundle import load_model
from detector.calibration import shuffled_per_class
from detector.data import load_split, to_unit_float
from detector.cli import CALIB_TRAIN
from detector.profiles import load_profiles
from detector.scoring import likelihood_features
from detector.stats import collect_paths
from study_data import FOUR, cached_features, mix_scores, paired_interval, thr_labels

torch.set_num_threads(2)
bundle, cache, clf_cache = sys.argv[1:4]
wd = float(sys.argv[4]) if len(sys.argv) > 4 else 1e-4
model, prof = load_model(bundle), load_profiles(bundle)
sets = torch.load(cache)

if os.path.exists(clf_cache):
    zc, yc = torch.load(clf_cache)
else:
    train = load_split(".data", "train")
    idx = torch.cat([i[CALIB_TRAIN // 10:] for i in shuffled_per_class(train.y, 10, 1)])  # outside train_sample(CALIB_TRAIN, 10, seed 1)
    logits, z = collect_paths(model, to_unit_float(train.x[idx]))
    ok = logits.argmax(1) == train.y[idx]
    zc, yc = torch.cat(z, 1)[ok], train.y[idx][ok]
    torch.save((zc, yc), clf_cache)
print(f"path classifier fit on {len(yc)} correctly classified training images, weight decay {wd}", flush=True)


def fit_linear(z: torch.Tensor, y: torch.Tensor) -> torch.nn.Linear:
    lin = torch.nn.Linear(z.shape[1], 10).double()
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=500, history_size=20, line_search_fn="strong_wolfe")
    x = z.double()

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x), y) + wd * lin.weight.square().sum()
        loss.backward()
        return loss
    opt.step(closure)
    return lin


lin = fit_linear(zc, yc)


def clf_columns(z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        lg = lin(z.double()).float()
    lp = lg.log_softmax(1)
    own_margin = likelihood_features(lp[:, None, :], labels)[:, :2]  # one "layer": log p(c), its margin (= logits')
    ent = -(lp.exp() * lp).sum(1, keepdim=True)
    return torch.cat([own_margin, ent], 1)


thr_clean = sets["thr"]["clean"]
acc = (lin(thr_clean[0].double()).argmax(1) == thr_clean[1]).double().mean()
print(f"path classifier agrees with the network on {acc:.4f} of clean threshold-part images", flush=True)
F0 = cached_features(sets, prof.freq)
F1 = {p: {a: torch.cat([F0[p][a], clf_columns(e[0], e[1])], 1) for a, e in d.items()} for p, d in sets.items()}
y_of = thr_labels(F1)
s0, s1 = mix_scores(F0, "745 path features"), mix_scores(F1, "+ path classifier")
rng = np.random.default_rng(0)
for a in FOUR:
    lo, hi = paired_interval(s0, s1, a, rng)
    alone = [roc_auc_score(y_of[a], -torch.cat([F1["thr"]["clean"][:, j], F1["thr"][a][:, j]]).numpy())
             for j in (-3, -2)]
    ent = roc_auc_score(y_of[a], torch.cat([F1["thr"]["clean"][:, -1], F1["thr"][a][:, -1]]).numpy())
    print(f"{a:8s} difference 95% interval [{lo:+.4f}, {hi:+.4f}] | alone: "
          f"log p(c) {alone[0]:.4f}, margin {alone[1]:.4f}, entropy {ent:.4f}", flush=True)
