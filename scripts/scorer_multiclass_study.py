"""Scorer study: one three-class tree model (clean / FGSM + PGD / CW + DeepFool) instead of two family models.

The shipped `path` score is logsumexp(A, B): A and B are binary tree models, each fitted on its family against the clean
rows on its own, so neither sees the other family's rows. A single multiclass model (TREE_PARAMS, class weights clean
1/2, each family 1/4: the equal-prior mixture) fits one boundary around the clean paths against both families at once;
its score is log(p_FGSM+PGD + p_CW+DeepFool) - log(p_clean). Both are fitted on the same rows (the cache's fit and
training parts: all clean rows against all attacked ones) and scored on the calibration half's threshold part (the
evaluation half is not touched). Decision rule, written down before the run: the multiclass model replaces the two
family models only if its mean AUROC over the four attacks beats theirs by >= 0.005 with FGSM and PGD >= 0.92.

usage: python scripts/scorer_multiclass_study.py BUNDLE CACHE.pt    (CACHE.pt from scripts/scorer_logit_study.py; ~9 min)
"""
import sys
import time

import numpy as np
import torch
from scipy.special import logsumexp
from sklearn.ensemble import HistGradientBoostingClassifier

from detector.profiles import load_profiles
from detector.scoring import TREE_PARAMS, PathScorer
from study_data import FOUR, cached_features, fit_rows, thr_aurocs

torch.set_num_threads(2)
prof = load_profiles(sys.argv[1])
F = cached_features(torch.load(sys.argv[2]), prof.freq, prof.gate_mean)
thr = F["thr"]
rows = fit_rows(F)
fams = [["fgsm", "pgd"], ["cw", "deepfool"]]
print("fit rows: " + ", ".join(f"{len(v)} {a}" for a, v in rows.items())
      + "; threshold part: " + ", ".join(f"{len(v)} {a}" for a, v in thr.items()), flush=True)


def show(name: str, au: list[float], t: float) -> None:
    print(f"{name:36s} " + " ".join(f"{a} {v:.4f}" for a, v in zip(FOUR, au)) + f" mean {np.mean(au):.4f}  ({t:.0f} s)",
          flush=True)


t0 = time.time()
two = PathScorer.fit(rows["clean"], {a: rows[a] for a in FOUR}, families=fams)
base = thr_aurocs(F, lambda x: two.score(x).double().numpy())
show("two family models, equal priors", base, time.time() - t0)

t0 = time.time()
x = torch.cat([rows["clean"], *(rows[a] for f in fams for a in f)]).double().numpy()
y = np.concatenate([np.zeros(len(rows["clean"]))] + [np.full(sum(len(rows[a]) for a in f), k + 1) for k, f in enumerate(fams)])
share = {0: 0.5, 1: 0.25, 2: 0.25}  # each class's total weight
w = np.array([share[int(c)] / np.mean(y == c) for c in y])
clf = HistGradientBoostingClassifier(**TREE_PARAMS).fit(x, y, sample_weight=w)


def multi(f: torch.Tensor) -> np.ndarray:
    d = clf.decision_function(f.double().numpy())  # (N, 3) per-class raw scores; softmax gives the probabilities
    return logsumexp(d[:, 1:], axis=1) - d[:, 0]


multi_au = thr_aurocs(F, multi)
show("one three-class model", multi_au, time.time() - t0)
gain = np.mean(multi_au) - np.mean(base)
ok = gain >= 0.005 and min(multi_au[:2]) >= 0.92
print(f"mean gain {gain:+.4f}, FGSM / PGD {multi_au[0]:.4f} / {multi_au[1]:.4f}: the three-class model "
      + ("replaces the family models (rule met)" if ok else "does not replace them (rule not met)"))
