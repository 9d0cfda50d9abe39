"""Scorer study: do class margins of the gate logits help, as the path likelihood margins did for z?

The shipped features hold each gate logit's deviation from the *predicted* class's mean, s - gate_mean[c], but nothing
compares s with the other classes' means. For z, the likelihood margins (own class against the best other) carried
CW / DeepFool: a minimally attacked image crosses the decision boundary while its path still looks like where it came
from. This study adds the same for the gate logits, 2L + 1 columns: per layer l, d_lk = mean_j (s_lj - gate_mean[k]_lj)^2
for every class k; own_l = d_lc; margin_l = own_l - min over k != c of d_lk; and the whole-path margin from the sums
over layers. Both family models (TREE_PARAMS, equal priors, as shipped) are fitted with and without them on the same
rows (the logit cache's fit and training parts) and scored on the calibration half's threshold part (the evaluation
half is not touched). Decision rule, written down before the run: the margins join the shipped features only if the
mean AUROC over the four attacks gains >= 0.005 and no attack loses more than 0.005.

usage: python scripts/scorer_logit_margin_study.py BUNDLE CACHE.pt    (CACHE.pt from scripts/scorer_logit_study.py; ~9 min)
"""
import sys
import time

import numpy as np
import torch

from detector.profiles import load_profiles
from detector.scoring import PathScorer
from study_data import FOUR, cached_features, fit_rows, thr_aurocs

torch.set_num_threads(2)
prof = load_profiles(sys.argv[1])
cache = torch.load(sys.argv[2])
F = cached_features(cache, prof.freq, prof.gate_mean)
widths = [f.shape[1] for f in prof.freq]
means = torch.cat(prof.gate_mean, 1).float()  # (K, sum C_l)
ends = np.cumsum([0, *widths])


def margins(pred: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """(N,) predictions, (N, sum C_l) gate logits -> (N, 2L + 1) own distance, margin per layer, whole-path margin."""
    sq = (s.float()[:, None, :] - means[None]) ** 2  # (N, K, sum C_l)
    d = torch.stack([sq[:, :, a:b].mean(2) for a, b in zip(ends[:-1], ends[1:])], 2)  # (N, K, L)
    n, idx = len(pred), pred.view(-1, 1, 1).expand(-1, 1, d.shape[2])
    own = d.gather(1, idx).squeeze(1)                                               # (N, L)
    margin = own - d.scatter(1, idx, float("inf")).amin(1)                          # (N, L)
    tot = d.sum(2)                                                                    # (N, K)
    total = tot.gather(1, pred.view(n, 1)) - tot.scatter(1, pred.view(n, 1), float("inf")).amin(1, keepdim=True)
    return torch.cat([own, margin, total], 1)


G = {p: {a: torch.cat([F[p][a], margins(e[0], e[2])], 1) for a, e in d.items()} for p, d in cache.items()}
fams = [["fgsm", "pgd"], ["cw", "deepfool"]]


def run(feats: dict, name: str) -> list[float]:
    t0 = time.time()
    rows = fit_rows(feats)
    sc = PathScorer.fit(rows["clean"], {a: rows[a] for a in FOUR}, families=fams)
    au = thr_aurocs(feats, lambda x: sc.score(x).double().numpy())
    print(f"{name:28s} {rows['clean'].shape[1]} features: " + " ".join(f"{a} {v:.4f}" for a, v in zip(FOUR, au))
          + f" mean {np.mean(au):.4f}  ({time.time() - t0:.0f} s)", flush=True)
    return au


base = run(F, "shipped features")
new = run(G, "+ gate-logit margins")
diff = np.subtract(new, base)
ok = diff.mean() >= 0.005 and diff.min() >= -0.005
print("change: " + " ".join(f"{a} {v:+.4f}" for a, v in zip(FOUR, diff)) + f" mean {diff.mean():+.4f}: the margins "
      + ("join the shipped features (rule met)" if ok else "stay out (rule not met)"))
