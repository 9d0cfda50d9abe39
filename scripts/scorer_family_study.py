"""Scorer study: one tree score fitted on the mix of all four attacks, or one specialist per attack family combined?

FGSM / PGD (large-step) and CW / DeepFool (minimal-perturbation) move paths in opposite directions (PGD paths look
*more* like the predicted class than clean paths do, CW / DeepFool paths less), and the mix is ~90% FGSM / PGD rows.
Fits with the production `PathScorer.fit` on the cache of scripts/scorer_likelihood_study.py (same fit + training
rows): the mix (what `dnd profiles` shipped until session 11: 600 trees), specialist A on FGSM + PGD and specialist B on CW + DeepFool, and combines
A and B by
  - max of p-values: each specialist's score turned into its tail probability under clean images, taken on one half
    of the threshold part's clean images (seeded); the larger wins;
  - logsumexp(A, B + offset): the specialists' log-odds as likelihood ratios of a mixture of the two families;
and scores what `dnd profiles` now ships (production PathScorer, one smaller model per family, logsumexp(A, B - 1)).
Every AUROC is on the *other* half of the threshold part's clean images against each attack there (the evaluation
half is not touched), with paired bootstrap 95% intervals of (max of p-values) - (mix).

usage: python scripts/scorer_family_study.py BUNDLE CACHE.pt      (CACHE.pt from scorer_likelihood_study.py; ~8 min)
"""
import sys

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detector.profiles import load_profiles
from detector.scoring import PathScorer
from study_data import FOUR, cached_features, fit_scores

torch.set_num_threads(2)
prof = load_profiles(sys.argv[1])
F = cached_features(torch.load(sys.argv[2]), prof.freq)
rng = np.random.default_rng(0)
n = len(F["thr"]["clean"])
perm = rng.permutation(n)
ref, test = perm[: n // 2], perm[n // 2:]  # p-value reference half, AUROC half


def aurocs(s: dict[str, np.ndarray], i0: np.ndarray = test, draw: dict[str, np.ndarray] | None = None) -> list[float]:
    out = []
    for a in FOUR:
        pos = s[a] if draw is None else s[a][draw[a]]
        out.append(roc_auc_score(np.r_[np.zeros(len(i0)), np.ones(len(pos))], np.r_[s["clean"][i0], pos]))
    return out


def p_values(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Share of reference clean scores below each score (1 = beyond every clean reference image)."""
    r = np.sort(s["clean"][ref])
    return {a: np.searchsorted(r, v, side="left") / len(r) for a, v in s.items()}


mix, a_fam, b_fam = (fit_scores(F, names)[0] for names in (FOUR, ["fgsm", "pgd"], ["cw", "deepfool"]))
pa, pb = p_values(a_fam), p_values(b_fam)
union = {a: np.maximum(pa[a], pb[a]) + 1e-9 * a_fam[a] for a in pa}  # ties (both beyond every reference) by A
rows = {"mix of all four (until s11)": mix, "A: FGSM + PGD": a_fam, "B: CW + DeepFool": b_fam,
        "max of p-values (A, B)": union}
rows |= {f"logsumexp(A, B {o:+d})": {a: np.logaddexp(a_fam[a], b_fam[a] + o) for a in a_fam} for o in (-1, 0)}
# what `dnd profiles` ships since session 12: PathScorer with one model per family (TREE_PARAMS: 300 trees each),
# score = logsumexp(A, B - 1) (detector/cli.py CALIB_FAMILY_LOG_PRIOR)
clean = torch.cat([F[p]["clean"] for p in ("fit", "train")])
att = {a: torch.cat([F[p][a] for p in ("fit", "train") if a in F[p]]) for a in FOUR}
shipped = PathScorer.fit(clean, att, [["fgsm", "pgd"], ["cw", "deepfool"]], [0.0, -1.0])
rows["shipped: 300 trees each, B -1"] = {a: shipped.score(F["thr"][a]).double().numpy() for a in ["clean", *FOUR]}
print(f"{len(test)} clean (AUROC half), " + ", ".join(f"{len(F['thr'][a])} {a}" for a in FOUR))
for name, s in rows.items():
    print(f"{name:28s} " + " ".join(f"{a} {v:.4f}" for a, v in zip(FOUR, aurocs(s))), flush=True)
d = []
for _ in range(300):
    i0 = test[rng.integers(0, len(test), len(test))]
    draw = {a: rng.integers(0, len(F["thr"][a]), len(F["thr"][a])) for a in FOUR}
    d.append(np.subtract(aurocs(union, i0, draw), aurocs(mix, i0, draw)))
lo, hi = np.percentile(d, 2.5, axis=0), np.percentile(d, 97.5, axis=0)
print("max of p-values - mix, 95% interval: " + " ".join(f"{a} [{l:+.4f}, {h:+.4f}]" for a, l, h in zip(FOUR, lo, hi)))
