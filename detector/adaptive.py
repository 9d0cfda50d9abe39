"""Detector-aware (adaptive) PGD: seek a misclassification *and* a path the detector accepts.

Per image, the target t is the most likely wrong class on the clean input. Each step descends
    CE(logits, t) + beta * softplus(score(path features w.r.t. t's profile) - threshold)
where the path is the exact eval-time z in the forward pass and SemHash's v1 in the backward pass (straight-through,
see gates.semhash), and `score` is the scorer's differentiable logistic part: with the default gradient-boosted
trees (piecewise constant, zero gradient) the attack descends on that surrogate, BPDA-style (Athalye et al. 2018),
while success is judged by the real score. Where the scorer also reads the gate logits s (profiles with their class
means), those features are differentiable in s as they are, so the attacker steers the gates' margins directly.
An image counts as broken at the first step where it is misclassified and not flagged; that
iterate is kept. This is the attack the detector has to survive (Carlini & Wagner 2017; Tramer et al. 2020).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .api import Detector
from .features import PathLikelihood, path_features

DEFAULTS: dict[str, Any] = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 20, "beta": 1.0, "random_start": True}


def adaptive_pgd(
    det: Detector,
    x: Tensor,
    y: Tensor,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 20,
    beta: float = 1.0,
    random_start: bool = True,
    batch_size: int = 250,
    seed: int = 0,
) -> Tensor:
    """x (N, 3, 32, 32) in [0, 1], y (N,) true labels -> adversarial images within the Linf eps-ball, in [0, 1]."""
    model, dev = det.model.eval(), det.device
    scorer, freq = det.profiles.scorer, [f.to(dev) for f in det.profiles.freq]
    sig, nb = [f >= 0.5 for f in freq], PathLikelihood.from_freq(freq)
    gm = None if det.profiles.gate_mean is None else [g.to(dev) for g in det.profiles.gate_mean]
    # Trees have no gradient: descend on the logistic surrogate (at its own threshold), judge with the real score.
    sur_thr = (
        det.threshold if scorer.trees is None or scorer.surrogate_threshold is None else scorer.surrogate_threshold
    )
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc="adaptive pgd", unit="batch", leave=False):
        x0, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        with torch.no_grad():
            logits = model(x0)
            target = logits.masked_fill(F.one_hot(yb, logits.shape[1]).bool(), float("-inf")).argmax(1)
        xa = x0.clone()
        if random_start:
            xa = (xa + (torch.rand(x0.shape, generator=gen) * 2 - 1).to(dev) * eps).clamp(0, 1)
        best = x0.clone()
        broken = torch.zeros(len(x0), dtype=torch.bool, device=dev)
        for _ in range(steps + 1):
            xa.requires_grad_(True)
            with model.straight_through_paths():
                o = model.forward_paths(xa)
                # gate-logit features (profiles with gate_mean) are differentiable in s as they are
                score = scorer.surrogate(path_features(o.z, target, freq, sig, nb, o.s if gm is not None else None, gm))
                loss = F.cross_entropy(o.logits, target, reduction="sum") + beta * F.softplus(score - sur_thr).sum()
            (grad,) = torch.autograd.grad(loss, xa)
            with torch.no_grad():
                # the forward values are exactly eval-time: record images that already evade (first success kept)
                pred = o.logits.argmax(1)
                hard_score = scorer.score(
                    path_features(
                        [z.detach() > 0.5 for z in o.z],
                        pred,
                        freq,
                        sig,
                        nb,
                        [s.detach() for s in o.s] if gm is not None else None,
                        gm,
                    )
                )
                now = (pred != yb) & (hard_score <= det.threshold) & ~broken
                best[now] = xa.detach()[now]
                broken |= now
                xa = xa.detach() - alpha * grad.sign()
                xa = torch.min(torch.max(xa, x0 - eps), x0 + eps).clamp(0, 1)
        with torch.no_grad():  # images never broken keep their last iterate (the strongest try)
            best[~broken] = xa[~broken]
        out.append(best.cpu())
    return torch.cat(out) if out else x.clone()
