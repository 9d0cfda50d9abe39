"""Architecture controlling module (gate) and the improved SemHash binarisation.

A gate looks at a conv layer's *input*, decides per sample which of the conv's output filters run and
returns z (N, C_out): the layer's part of the calculation path.

Improved SemHash (Kaiser & Bengio 2018), as used by DND:
  training:  s' = s + noise,  v1 = clip(1.2 * sigmoid(s') - 0.1, 0, 1)  (soft, differentiable)
                              v2 = 1(s' > 0)                             (hard)
             z = v1 or v2, chosen at random per element; the gradient is always that of v1.
  eval:      z = 1(s > 0), binary and deterministic.
v1 has zero gradient where it clips (|s'| > ~2.4), so gates must not start saturated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def soft_gate(s: Tensor) -> Tensor:
    """v1 = max(0, min(1, 1.2 * sigmoid(s) - 0.1)); the differentiable stand-in for z."""
    return torch.clamp(1.2 * torch.sigmoid(s) - 0.1, 0.0, 1.0)


def semhash(
    s: Tensor, noise_std: float, training: bool, p_hard: float = 0.5, relax: str | float | None = None
) -> Tensor:
    """Binarise gate logits s (N, C). See module docstring for the train/eval rules.

    p_hard is the share of elements that take v2; the trainer sets noise_std=0, p_hard=1 for its final epochs,
    so that the network (and its BN statistics) see exactly the eval-time paths while gates still learn.
    relax (eval only), the ways adaptive attacks differentiate through the binary gates: "st" keeps the forward value
    z = 1(s > 0) and passes v1's gradient (straight-through); a temperature T replaces z by sigmoid(s / T) in the
    forward pass too (a tempered relaxation: smooth, but not the network the detector runs)."""
    if not training:
        if relax is None:
            return (s > 0).to(s.dtype)
        if relax == "st":
            return (s > 0).to(s.dtype) + (soft_gate(s) - soft_gate(s).detach())
        return torch.sigmoid(s / float(relax))
    s_noisy = s + noise_std * torch.randn_like(s) if noise_std > 0 else s
    v1 = soft_gate(s_noisy)
    v2 = (s_noisy > 0).to(s.dtype)
    use_hard = torch.rand_like(s) < p_hard
    # Straight-through: forward value v2 where use_hard, backward always d v1 / d s.
    return v1 + ((v2 - v1) * use_hard).detach()


class Gate(nn.Module):
    """GAP(x) (done by the caller) -> LayerNorm -> FC(C_in -> C_in/r) -> ReLU -> FC(-> C_out) = gate logits s
    (N, C_out).

    The LayerNorm (per sample, no batch statistics) puts the pooled input on a unit scale: without it the gate
    logits of a trained ResNet-20 varied across inputs by only 0.04-0.17 (std), far below the SemHash noise (1.0),
    so z carried no information about the input and the MI loss stayed at ln(10) (measured)."""

    def __init__(self, in_channels: int, out_channels: int, reduction: int, bias_init: float) -> None:
        super().__init__()
        hidden = max(in_channels // reduction, 1)
        self.norm = nn.LayerNorm(in_channels)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, out_channels)
        nn.init.constant_(self.fc2.bias, bias_init)

    def forward(self, pooled: Tensor) -> Tensor:
        # pooled: spatial mean of the conv's input (N, C_in) -> s: (N, C_out)
        return self.fc2(F.relu(self.fc1(self.norm(pooled))))
