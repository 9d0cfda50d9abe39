"""Detector-aware PGD (Linf): seek a misclassification *and* a path the detector accepts.

Each restart r targets the (r+1)-th most likely wrong class of the clean image (as APGD-T does), from a uniform
random start, for `steps` steps whose size decays from eps/4 to eps/40 (cosine). Two ways to combine the two goals:
- the sum: descend CE(logits, target) + beta * softplus(surrogate score - threshold);
- orthogonal (Bryniarski et al. 2022): while the image is still classified correctly, step along the classifier
  gradient with its component along the detector gradient removed; once misclassified but flagged, the other way.
Success is judged by the real detector after every step (DetectorObjective.broken); an image keeps the first iterate
that breaks it and takes no further steps or restarts (that also saves the compute an accurate, fragile model would
waste).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..parallel import shard_map
from .objective import DetectorObjective


def _project_out(g: Tensor, d: Tensor) -> Tensor:
    """g minus its component along d, per image (flattened)."""
    gf, df = g.flatten(1), d.flatten(1)
    coef = (gf * df).sum(1, keepdim=True) / df.pow(2).sum(1, keepdim=True).clamp_min(1e-20)
    return (gf - coef * df).view_as(g)


def adaptive_pgd(
    obj: DetectorObjective,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 100,
    restarts: int = 5,
    relax: str | float = "st",
    beta: float = 1.0,
    orthogonal: bool = False,
    seed: int = 0,
    batch_size: int = 250,
) -> Tensor:
    """x (N, 3, S, S) in [0, 1], true labels y (N,) -> adversarial images in the Linf eps-ball (eps in [0, 1])."""
    dev = obj.det.device

    def one(b: int) -> Tensor:
        i = b * batch_size
        gen = torch.Generator().manual_seed(seed * 1_000_003 + b)  # per batch: any split of the batches agrees
        x0, yb = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        with torch.no_grad():
            logits = obj.det.model.eval()(x0)
            wrong = logits.masked_fill(F.one_hot(yb, logits.shape[1]).bool(), float("-inf")).argsort(1, descending=True)
        best, broken = x0.clone(), obj.broken(x0, yb)  # a clean image already wrong and unflagged stays as it is
        for r in range(restarts):
            todo = torch.nonzero(~broken).flatten()
            if not len(todo):
                break
            target = wrong[todo, r % (wrong.shape[1] - 1)]
            adv, hit = _run(obj, x0[todo], yb[todo], target, eps, steps, relax, beta, orthogonal, gen)
            best[todo[hit]] = adv[hit]
            best[todo[~hit]] = adv[~hit]  # not broken yet: the last iterate, the strongest try so far
            broken[todo] |= hit
        return best.cpu()

    out = shard_map(one, -(-len(x) // batch_size))  # under torchrun, each process takes its share of the batches
    return torch.cat(out) if out else x.clone()


def _run(
    obj: DetectorObjective,
    x0: Tensor,
    y: Tensor,
    target: Tensor,
    eps: float,
    steps: int,
    relax: str | float,
    beta: float,
    orthogonal: bool,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """One restart on images x0: (last or first-breaking iterate, broken mask)."""
    xa = (x0 + (torch.rand(x0.shape, generator=gen) * 2 - 1).to(x0.device) * eps).clamp(0, 1)
    hit = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
    keep = x0.clone()
    for t in range(steps):
        active = ~hit
        if not active.any():
            break
        xs = xa[active].detach().requires_grad_(True)
        logits, margin = obj(xs, target[active], relax)
        ce = F.cross_entropy(logits, target[active], reduction="sum")
        det_loss = F.softplus(margin).sum()
        if orthogonal:
            g_c, g_d = torch.autograd.grad(ce, xs, retain_graph=True)[0], torch.autograd.grad(det_loss, xs)[0]
            correct = (logits.argmax(1) == y[active]).view(-1, 1, 1, 1)
            grad = torch.where(correct, _project_out(g_c, g_d), _project_out(g_d, g_c))
        else:
            (grad,) = torch.autograd.grad(ce + beta * det_loss, xs)
        alpha = eps / 40 + (eps / 4 - eps / 40) * 0.5 * (1 + math.cos(math.pi * t / max(steps - 1, 1)))
        with torch.no_grad():
            step = xs - alpha * grad.sign()
            xa[active] = torch.min(torch.max(step, x0[active] - eps), x0[active] + eps).clamp(0, 1)
            now = torch.zeros_like(hit)
            now[active] = obj.broken(xa[active], y[active])
            keep[now] = xa[now]
            hit |= now
    keep[~hit] = xa[~hit]
    return keep, hit
