"""Scorer study: would more CW / DeepFool training rows help the CW + DeepFool tree model?

`dnd profiles` attacks 2,000 of its training images with CW and DeepFool (--calib-train-subset; ~8 min per 2,000 on 2
cores). This study draws the learning curve that decides whether a larger subset is worth its time: the CW + DeepFool
family model (TREE_PARAMS, as shipped) is fitted on all clean rows of the cache's fit + training parts against a
random share (1/4, 1/2, all) of their CW and DeepFool rows, two draws per share, and scored alone on the calibration
half's threshold part (the evaluation half is not touched). Decision rule, written down before the run: a larger subset
is worth a `dnd profiles` rebuild only if doubling the rows (1/2 -> all) lifts the mean CW / DeepFool AUROC by >= 0.01.

usage: python scripts/scorer_subset_study.py BUNDLE CACHE.pt    (CACHE.pt from scripts/scorer_logit_study.py; ~9 min)
"""
import sys
import time

import numpy as np
import torch

from detector.profiles import load_profiles
from detector.scoring import PathScorer
from study_data import cached_features, fit_rows, thr_aurocs

torch.set_num_threads(2)
prof = load_profiles(sys.argv[1])
F = cached_features(torch.load(sys.argv[2]), prof.freq, prof.gate_mean)
rows = fit_rows(F)
clean, pool = rows["clean"], {a: rows[a] for a in ("cw", "deepfool")}
thr = F["thr"]


print(f"{len(clean)} clean rows; pool: " + ", ".join(f"{len(v)} {a}" for a, v in pool.items())
      + f"; threshold part: {len(thr['clean'])} clean, {len(thr['cw'])} cw, {len(thr['deepfool'])} deepfool", flush=True)
mean_of: dict[float, float] = {}
for share in (0.25, 0.5, 1.0):
    got = []
    for draw in range(1 if share == 1.0 else 2):
        g = torch.Generator().manual_seed(draw)
        att = {a: v[torch.randperm(len(v), generator=g)[: round(share * len(v))]] for a, v in pool.items()}
        t0 = time.time()
        sc = PathScorer.fit(clean, att, families=[["cw", "deepfool"]])
        au = thr_aurocs(F, lambda x: sc.score(x).double().numpy(), ["cw", "deepfool"])
        got.append(np.mean(au))
        print(f"share {share:.2f} draw {draw}: {sum(map(len, att.values()))} attacked rows  cw {au[0]:.4f} "
              f"deepfool {au[1]:.4f} mean {np.mean(au):.4f}  ({time.time() - t0:.0f} s)", flush=True)
    mean_of[share] = float(np.mean(got))
gain = mean_of[1.0] - mean_of[0.5]
print(f"mean CW / DeepFool AUROC by share: " + ", ".join(f"{s:.2f}: {m:.4f}" for s, m in mean_of.items()))
print(f"doubling (1/2 -> all) gains {gain:+.4f}: a larger --calib-train-subset is "
      + ("worth a rebuild (>= 0.01)" if gain >= 0.01 else "not worth a rebuild (< 0.01)"))
