"""Inference that computes only the open filters of each image's calculation path (eval only).

The decoupled network masks the outputs of closed filters after computing them; here they are not computed:
- each conv has its BatchNorm folded in (W' = W g / sqrt(v + eps), b' = beta - mu g / sqrt(v + eps), exact in eval);
- a unit's gate runs first (it reads the spatial mean of the unit's input, known before the conv), then the conv
  runs on the rows of W' of the open filters only; the second conv of a block also reads only the first conv's open
  channels (its weight sliced on both axes);
- a batch runs on the union of its images' open filters per layer, the filters closed for an image zeroed for it
  (at batch 1 the union is the image's own path).
Same logits and paths as `CifarResNet.forward_paths` up to float rounding (a test checks it; a gate logit within
~1e-5 of 0 may flip). Which of the two paths `Detector.predict` runs is chosen by measurement (bench/inference.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .networks import CifarResNet, ConvUnit


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale[:, None, None, None]
    return w.contiguous(memory_format=torch.channels_last), bn.bias - bn.running_mean * scale


class _Unit(nn.Module):
    def __init__(self, u: ConvUnit) -> None:
        super().__init__()
        w, b = _fold(u.conv, u.bn)
        self.register_buffer("w", w.detach())
        self.register_buffer("b", b.detach())
        self.stride, self.relu, self.gate = u.conv.stride[0], u.relu, u.gate

    def forward(self, x: Tensor, pooled: Tensor, cin: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (N, k_in, H, W): only the channels `cin` (indices into the full input) of the unit's input, or all of
        them when cin is None; pooled (N, C_in) the spatial mean of the full input. Returns (output on the open
        channels (N, k, H', W'), their indices (k,), gate logits s (N, C_out), z (N, C_out))."""
        s = self.gate(pooled)
        z = s > 0
        idx = torch.nonzero(z.any(0)).flatten()  # the batch's union of open filters
        w = self.w.index_select(0, idx)
        if cin is not None:
            w = w.index_select(1, cin)
        y = F.conv2d(x, w, self.b.index_select(0, idx), self.stride, 1)
        if self.relu:
            y = F.relu(y)
        # filters in the union but closed for an image (none at batch 1); no Python branch, so one trace serves
        # every batch size
        y = y * z.index_select(1, idx)[:, :, None, None].to(y.dtype)
        return y, idx, s, z.to(x.dtype)


class SparseNet(nn.Module):
    """`forward(x)` -> (logits (N, K), penultimate features (N, C), z L x (N, C_l), s L x (N, C_l)), the tuple the
    detector reads, computing only open filters. Built from a decoupled CifarResNet in eval mode; it shares the gates
    and keeps folded copies of the conv weights."""

    def __init__(self, model: CifarResNet) -> None:
        super().__init__()
        if not model.cfg.decoupled:
            raise ValueError("SparseNet needs a decoupled model (with gates)")
        model = model.eval()
        self.register_buffer("mean", model.mean)
        self.register_buffer("std", model.std)
        w, b = _fold(model.stem[0], model.stem[1])
        self.register_buffer("stem_w", w.detach())
        self.register_buffer("stem_b", b.detach())
        self.units = nn.ModuleList(_Unit(u) for u in model.units())
        self.pads = [(blk.stride, blk.pad // 2, blk.pad - blk.pad // 2) for blk in model.blocks]
        self.fc = model.fc

    @torch.inference_mode()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        h = F.relu(F.conv2d((x - self.mean) / self.std, self.stem_w, self.stem_b, 1, 1))
        zs, ss = [], []
        for i, (stride, lo, hi) in enumerate(self.pads):
            u1, u2 = self.units[2 * i], self.units[2 * i + 1]
            y1, idx1, s1, z1 = u1(h, h.mean((2, 3)), None)
            pooled = torch.zeros_like(z1).index_copy_(1, idx1, y1.mean((2, 3)))  # (N, C): closed channels are 0
            y2, idx2, s2, z2 = u2(y1, pooled, idx1)
            sc = F.pad(h[:, :, ::stride, ::stride], (0, 0, 0, 0, lo, hi)) if stride != 1 or lo + hi else h
            h = F.relu(sc.index_add(1, idx2, y2))
            zs += [z1, z2]
            ss += [s1, s2]
        feats = h.mean((2, 3))
        return self.fc(feats), feats, zs, ss
