"""Screen (session 31): does the path of the mirrored image tell attacks from clean images?

The network is trained on randomly mirrored images, so a clean image and its mirror image take similar paths. An
attack is built for one orientation: a minimal one (CW, DeepFool) sits just across the decision boundary, and the
mirror image may fall back, taking the path of the class it came from. The signal is path information only: the
gates' outputs z of two forward passes, x and flip(x).

On the calibration half's threshold part (the images the shipped scorer never fitted on; the evaluation half is not
touched), a class-balanced sample of --limit images, AUROC of clean (correctly classified) against successful attacks:
  path       the shipped score (det.predict(x).scores)
  flip       mean over the gated layers of the Hamming distance (fraction of filters) between z(x) and z(flip(x))
  rank mean  the mean of the two scores' ranks over clean + attacked images (nothing fitted)
  path(flip) the shipped score of the mirror image (its own predicted class and profile)
  path max   the larger of path and path(flip)
Serving it would cost a second forward pass per image, far over the 10% scoring budget: a screen, not a default.

    python scripts/path_flip_study.py [MODEL] [--limit N] [--data ROOT]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from detector import load_detector
from detector.attacks import run_attack
from study_data import FOUR, calibration_parts


def rankdata(v: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 of v, ties given their mean rank (the flip distance takes few distinct values)."""
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v))
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    return np.bincount(inv, weights=r)[inv] / counts[inv]


@torch.no_grad()
def flip_distance(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(N,) mean over gated layers of the fraction of filters whose state differs between x and its mirror image."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        z, zf = model.forward_paths(xb).z, model.forward_paths(xb.flip(3)).z
        out.append(torch.stack([(a != b).float().mean(1) for a, b in zip(z, zf)], 1).mean(1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="models/resnet20-decoupled")
    ap.add_argument("--data", default=".data")
    ap.add_argument("--limit", type=int, default=500, help="threshold-part images, class-balanced (at most 2,000)")
    a = ap.parse_args()
    det = load_detector(a.model)
    x, y = calibration_parts(a.data)["thr"]
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([c[torch.randperm(len(c), generator=g)][: -(-a.limit // 10)]
                     for c in (torch.nonzero(y == k).flatten() for k in range(10))])[: a.limit]
    x, y = x[idx], y[idx]
    keep = det.predict(x).labels == y
    clean = x[keep]
    s_clean, f_clean = det.predict(clean).scores, flip_distance(det.model, clean)
    m_clean = det.predict(clean.flip(3)).scores
    print(f"{len(x)} threshold-part images, {len(clean)} correctly classified; flip distance on clean: mean "
          f"{float(f_clean.mean()):.4f}")
    print(f"{'attack':9s} {'n_adv':>5s} {'path':>6s} {'flip':>6s} {'rank mean':>9s} {'path(flip)':>10s} {'path max':>8s}"
          "   flip distance (mean)")
    for name in FOUR:
        s = run_attack(det.model, name, x, y)
        adv = s.x_adv[s.success]
        s_adv, f_adv, m_adv = det.predict(adv).scores, flip_distance(det.model, adv), det.predict(adv.flip(3)).scores
        lab = np.r_[np.zeros(len(clean)), np.ones(len(adv))]
        path, flip = np.r_[s_clean.numpy(), s_adv.numpy()], np.r_[f_clean.numpy(), f_adv.numpy()]
        both = (rankdata(path) + rankdata(flip)) / 2
        mirror = np.r_[m_clean.numpy(), m_adv.numpy()]
        print(f"{name:9s} {len(adv):5d} {roc_auc_score(lab, path):6.3f} {roc_auc_score(lab, flip):6.3f} "
              f"{roc_auc_score(lab, both):9.3f} {roc_auc_score(lab, mirror):10.3f} "
              f"{roc_auc_score(lab, np.maximum(path, mirror)):8.3f}   {float(f_adv.mean()):.4f}")


if __name__ == "__main__":
    main()
