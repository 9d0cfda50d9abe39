"""DND's decoupling losses on the calculation path (L gated layers, z_l of shape (N, C_l)).

  L_mi: a linear classifier per layer (C_l -> K) must predict the label from z_l: paths carry the class.
  L_kl: KL(p || q) with p = z_l / sum(z_l) and q = the layer's pooled (unmasked) activation energy as a
        distribution over channels: filters that the gate closes should carry little signal anyway.
  L_s : L1 of z, as the mean density (fraction of open filters), averaged over layers; scale-free, so one
        lambda_s works for any width.
All three are averaged over layers (not summed), so the lambdas do not grow with depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .networks import PathOutput

_EPS = 1e-4


def path_kl(z: Tensor, energy: Tensor) -> Tensor:
    """Mean over all leading dims of KL(z/|z| || energy/|energy|) over channels; z, energy (..., N, C), energy >= 0."""
    # Normaliser clamped at 1: exact whenever a filter is open, and a bounded gradient when a layer is all shut.
    p = z / z.sum(dim=-1, keepdim=True).clamp_min(1.0)
    q = (energy + _EPS) / (energy + _EPS).sum(dim=-1, keepdim=True)
    # p*log(p) with p clamped inside the log: value 0 at p = 0 and a finite gradient (xlogy's is 0/0 there).
    return (p * (torch.log(p.clamp_min(1e-6)) - torch.log(q))).sum(dim=-1).mean()


class DecouplingLoss(nn.Module):
    """Holds the per-layer MI classifiers; returns the unweighted terms so they can be logged separately.

    Layers of equal width are stacked and handled by one batched op each (ResNet-20: 3 groups of 6 instead of 18
    layers one by one): the same values with fewer ops, which bound a GPU training step (decoupled step 3240 -> 2377
    aten ops, `bench/train_epoch.py --count-ops`)."""

    def __init__(self, channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(c, num_classes) for c in channels)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(channels):
            groups.setdefault(c, []).append(i)
        self.groups = list(groups.values())  # layer indices per width

    def forward(self, out: PathOutput, y: Tensor) -> dict[str, Tensor]:
        if len(out.z) != len(self.heads):
            raise ValueError(f"expected paths for {len(self.heads)} gated layers, found {len(out.z)}")
        if out.energy is None:
            raise ValueError("expected the layers' activation energy: call forward_paths(x, energy=True)")
        mi, kl, l1 = [], [], []
        for idx in self.groups:
            z = torch.stack([out.z[i] for i in idx])  # (G, N, C)
            e = torch.stack([out.energy[i] for i in idx])  # (G, N, C)
            w = torch.stack([self.heads[i].weight for i in idx]).transpose(1, 2)  # (G, C, K)
            b = torch.stack([self.heads[i].bias for i in idx]).unsqueeze(1)  # (G, 1, K)
            logits = torch.baddbmm(b, z, w)  # (G, N, K)
            ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(len(idx)), reduction="none")
            mi.append(ce.view(len(idx), -1).mean(1))  # (G,) per-layer MI loss
            kl.append(path_kl(z, e) * len(idx))  # sum of per-layer means
            l1.append(z.mean(dim=(1, 2)))  # (G,) per-layer density
        n = len(self.heads)
        return {"mi": torch.cat(mi).mean(), "kl": torch.stack(kl).sum() / n, "l1": torch.cat(l1).mean()}
