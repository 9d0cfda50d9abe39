"""The Mahalanobis feature ensemble as Lee et al. 2018 run it, for a labelled upper bound: input preprocessing per
layer, one logistic regression per attack, the noise magnitude chosen per attack.

Per layer l (the stem and each block, pooled as in `MahalanobisEnsemble`), the image is moved against the gradient of
its distance to the closest class mean: x_l = x - eps * sign(grad_x M_l(x)), and M_l(x_l) is that layer's feature.
The gradient does not depend on eps, so one forward and L backward passes serve every eps of the grid; each eps then
costs L forwards (one per layer's moved image). eps is in [0, 1] pixel units: Lee's grid {0.0005 .. 0.01} in
normalised units is ~{0.0001 .. 0.0025} here (CIFAR std ~0.25); this grid reaches a little further.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from ..networks import GatedNetwork, spatial_mean
from .mahalanobis import MahalanobisEnsemble

EPS_GRID = (0.0, 0.0005, 0.001, 0.002, 0.004)


def _pooled_with_grad(model: GatedNetwork, x: Tensor) -> list[Tensor]:
    """L x (N, C_l) pooled activations of model.stages(), recorded with autograd."""
    acts: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out)) for m in model.stages()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return [spatial_mean(a.float()) for a in acts]


def _closest(g: object, f: Tensor) -> Tensor:
    """(N, C) -> (N,) half the squared Mahalanobis distance to the closest class mean of pytorch-ood's Gaussian g."""
    mu, prec = g.mu.to(f), g.precision.to(f)  # (K, C), (C, C)
    d = f[:, None, :] - mu[None]  # (N, K, C)
    return 0.5 * torch.einsum("nkc,cd,nkd->nk", d, prec, d).min(1).values


def lee_distances(
    model: GatedNetwork,
    ensemble: MahalanobisEnsemble,
    x: Tensor,
    eps_grid: tuple[float, ...] = EPS_GRID,
    batch_size: int = 250,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Images x (N, 3, H, W) in [0, 1] -> (E, N, L): per eps of the grid, each layer's distance after that layer's
    preprocessing step. eps = 0 gives `ensemble.distances` of the unmoved images."""
    model = model.eval().to(device)
    out = torch.zeros(len(eps_grid), len(x), len(ensemble.gaussians))
    for i in tqdm(range(0, len(x), batch_size), desc="lee preprocessing", unit="batch", leave=False):
        xb = x[i : i + batch_size].to(device).float().requires_grad_(True)
        with torch.enable_grad():
            pooled = _pooled_with_grad(model, xb)
            dist = [_closest(g, f) for g, f in zip(ensemble.gaussians, pooled)]
            last = len(dist) - 1
            signs = [torch.autograd.grad(d.sum(), xb, retain_graph=k < last)[0].sign() for k, d in enumerate(dist)]
        with torch.no_grad():
            for e, eps in enumerate(eps_grid):
                for k, (g, s) in enumerate(zip(ensemble.gaussians, signs)):
                    if eps == 0:
                        out[e, i : i + len(xb), k] = dist[k].detach().cpu()
                        continue
                    f = _pooled_with_grad(model, xb.detach() - eps * s)[k]  # lower distance: towards a class mean
                    out[e, i : i + len(xb), k] = _closest(g, f).cpu()
    return out


def cross_fit_per_attack(
    clean: Tensor, attacked: Tensor, target_fpr: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Lee's per-attack fit, two-fold: clean (E, N0, L) and attacked (E, N1, L) distances under each eps. On each fold
    a logistic regression per eps (baselines.combiner) is fitted on the other fold; the eps with the best AUROC there
    is kept, and the held-out fold is scored minus the fitting fold's threshold at `target_fpr` (so that 0 is each
    fold's own threshold). Returns the held-out (clean, attacked) scores, and per fold the chosen eps's index."""
    from sklearn.metrics import roc_auc_score

    from .combiner import LogisticCombiner

    g = torch.Generator().manual_seed(seed)
    fold_c, fold_a = torch.randperm(clean.shape[1], generator=g) % 2, torch.randperm(attacked.shape[1], generator=g) % 2
    s_c, s_a, chosen = np.zeros(clean.shape[1]), np.zeros(attacked.shape[1]), []
    for f in (0, 1):
        tc, ta = (fold_c != f).numpy(), (fold_a != f).numpy()  # fit on the other fold, score fold f
        best = None
        for e in range(clean.shape[0]):
            c, a = clean[e].numpy(), attacked[e].numpy()
            comb = LogisticCombiner(c[tc], a[ta])
            fit_c, fit_a = comb(c[tc]).numpy(), comb(a[ta]).numpy()
            auc = roc_auc_score(np.r_[np.zeros(len(fit_c)), np.ones(len(fit_a))], np.r_[fit_c, fit_a])
            if best is None or auc > best[0]:
                best = (auc, e, comb, float(np.quantile(fit_c, 1 - target_fpr)))
        _, e, comb, thr = best
        s_c[~tc] = comb(clean[e].numpy()[~tc]).numpy() - thr
        s_a[~ta] = comb(attacked[e].numpy()[~ta]).numpy() - thr
        chosen.append(e)
    return s_c, s_a, chosen
