"""Scorer study: do the gates' continuous logits s help the `path` score beyond the binary path z?

z = 1(s > 0) keeps only the sign of each gate logit. A CW or DeepFool image has just crossed the decision boundary;
its gates may sit closer to flipping than a clean image's do, which z cannot show. This study adds s-derived columns
to `path_features` and refits the shipped scorer (production `PathScorer.fit`, one tree model per attack family,
the shipped log prior) on the same rows with and without them:
  z     the shipped 745 features;
  +dev  + s - mean_s[c] per filter (672; mean_s[c]: class c's mean gate logit over clean training images, like the
        profiles' firing frequencies for z);
  +sum  + per layer mean |s| and share of gates with |s| < 1 (36: how close the layer's gates are to flipping).
Rows: the calibration half's fit part (fit) and threshold part (scored), clean and all four attacks, plus N_TRAIN
class-balanced training images (FGSM + PGD on all, CW + DeepFool on N_SUB of them: the shipped mix, smaller). The
evaluation half is not touched. Paired bootstrap 95% intervals of the AUROC difference against `z`.

usage: python scripts/scorer_logit_study.py BUNDLE CACHE.pt [N_TRAIN [N_SUB]]   (defaults 5000 1000; the first run
collects the cache, 20-40 min on 2 cores (THREADS=1 sets torch's threads); later runs ~6 min, ~2 per feature set)
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
from detector.scoring import PathScorer, path_features
from detector.stats import collect_gate_paths
from study_data import FOUR, calibration_parts, paired_interval

torch.set_num_threads(int(os.environ.get("THREADS", "2")))
bundle, cache = sys.argv[1], sys.argv[2]
n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 5000
n_sub = int(sys.argv[4]) if len(sys.argv) > 4 else 1000
model, prof = load_model(bundle).eval(), load_profiles(bundle)
widths = [f.shape[1] for f in prof.freq]


def paths(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) in [0, 1] -> predictions (N,), z (N, 672) bool, s (N, 672) float."""
    logits, z, s = collect_gate_paths(model, x)
    return logits.argmax(1), torch.cat(z, 1), torch.cat(s, 1)


if not os.path.exists(cache):
    parts = calibration_parts(".data", n_train)
    res: dict = {}
    for part, (x, y) in parts.items():
        pred, z, s = paths(x)
        ok = pred == y
        res[part] = {"clean": (pred[ok], z[ok], s[ok])}
        xo, yo = x[ok], y[ok]
        for a in FOUR:
            if part == "train" and a in ("cw", "deepfool"):
                sub = balanced_subset(torch.arange(len(yo)), yo, n_sub, 10)
                xa, ya = xo[sub], yo[sub]
            else:
                xa, ya = xo, yo
            att = run_attack(model, a, xa, ya)
            p, za, sa = paths(att.x_adv[att.success])
            res[part][a] = (p, za, sa)
            print(part, a, len(ya), f"success {att.success_rate:.4f}", flush=True)
    torch.save(res, cache)
res = torch.load(cache)

# class-conditional mean gate logit over the clean training rows (predicted = true class there)
p_tr, _, s_tr = res["train"]["clean"]
mean_s = torch.stack([s_tr[p_tr == k].mean(0) for k in range(10)])  # (K, 672)


def features(kind: str, e: tuple) -> torch.Tensor:
    pred, z, s = e
    if kind == "+dev":  # the shipped columns s - mean_s[pred], with mean_s in place of the profiles' gate_mean
        return path_features(list(torch.split(z, widths, 1)), pred, prof.freq, s=list(torch.split(s, widths, 1)),
                             gate_mean=list(torch.split(mean_s, widths, 1)))
    base = path_features(list(torch.split(z, widths, 1)), pred, prof.freq)
    if kind == "z":
        return base
    a = s.abs()
    layer = [(c.mean(1, keepdim=True), (c < 1).float().mean(1, keepdim=True)) for c in torch.split(a, widths, 1)]
    return torch.cat([base, *[t for pair in layer for t in pair]], 1)


meta = prof.meta["calibration"]
fams, prior = meta["families"], meta["family_log_prior"]
scores: dict[str, dict[str, np.ndarray]] = {}
for kind in ("z", "+dev", "+sum"):
    F = {p: {a: features(kind, e) for a, e in d.items()} for p, d in res.items()}
    clean = torch.cat([F["fit"]["clean"], F["train"]["clean"]])
    att = {a: torch.cat([F["fit"][a], F["train"][a]]) for a in FOUR}
    sc = PathScorer.fit(clean, att, fams, prior)
    scores[kind] = {a: sc.score(F["thr"][a]).double().numpy() for a in ["clean", *FOUR]}
    au = [roc_auc_score(np.r_[np.zeros(len(F["thr"]["clean"])), np.ones(len(F["thr"][a]))],
                        np.r_[scores[kind]["clean"], scores[kind][a]]) for a in FOUR]
    print(f"{kind:5s} {clean.shape[1]} features, {len(clean)} clean: " + " ".join(f"{a} {v:.4f}" for a, v in zip(FOUR, au)),
          flush=True)
rng = np.random.default_rng(0)
for kind in ("+dev", "+sum"):
    iv = [paired_interval(scores["z"], scores[kind], a, rng) for a in FOUR]
    print(f"{kind} - z, 95% intervals: " + " ".join(f"{a} [{lo:+.3f}, {hi:+.3f}]" for a, (lo, hi) in zip(FOUR, iv)))
