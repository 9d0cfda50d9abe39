"""Building blocks every gated network shares: layout-friendly spatial means, the option-A shortcut, the
input-layout guard for attacks, and PathOutput, what one forward pass knows about the calculation path."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _mean_hw(x: Tensor) -> Tensor:
    """x.mean(dim=(2, 3)), (N, C, H, W) -> (N, C). For bf16 / fp16 as a sum (accumulated in float32 by the kernel)
    divided by H * W: Tensor.mean first copies the whole tensor to float32, several times slower than the sum. With
    _SpatialMean's bf16 backward below, the decoupled bf16 training step went from 2.31x to 2.12x of the dense one
    (`python bench/train_epoch.py --bf16`). The values are the same when H * W is a power of two
    (32², 16², 8² here): the division is then exact."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    return x.mean(dim=(2, 3))


class _SpatialMean(torch.autograd.Function):
    """x.mean(dim=(2, 3)) whose backward returns the gradient as a broadcast view, (N, C, 1, 1) expanded to x's shape.

    Autograd's own mean backward writes a new NCHW-contiguous (N, C, H, W) tensor; in this channels_last network it
    then meets channels_last gradients in mixed-layout adds and ReLU backwards, which run several times slower than
    same-layout ones. The decoupled network pools 37 activations per forward (gate inputs, KL energies), so this cost
    it ~20% of a training step (bench/train_epoch.py; measured 315 -> 253 ms per step of 128 on 2 cores).
    In bf16 / fp16 the view is written out in x's layout instead: there, element-wise kernels fed a stride-0 operand
    take a slow path, several times slower than with the copy included (in float32 it is the other way round), which
    hit the ReLU backward in front of the KL energies of the 9 block-output units (see _mean_hw for the step time)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.shape = x.shape
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        ctx.layout = torch.channels_last if cl else torch.contiguous_format
        return _mean_hw(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        n, c, h, w = ctx.shape
        g = (grad / (h * w))[:, :, None, None].expand(n, c, h, w)
        return g.contiguous(memory_format=ctx.layout) if grad.dtype in (torch.bfloat16, torch.float16) else g


def spatial_mean(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C). With autograd recording, through _SpatialMean (same values, same gradient,
    layout-friendly
    backward); otherwise the plain op (a Python autograd Function costs ~10 us per call, felt at batch 1)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _SpatialMean.apply(x)
    return _mean_hw(x)


class _OptionAShortcut(torch.autograd.Function):
    """The option-A shortcut: x (N, C, H, W) subsampled by `stride` and zero-padded to lo + C + hi channels. Its
    backward
    writes the gradient in x's own layout; autograd's (pad, then strided slice backward) returned NCHW, which met the
    channels_last gradients in mixed-layout ops (~3% of a training step, dense and decoupled alike, measured)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, stride: int, lo: int, hi: int) -> Tensor:
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        ctx.shape, ctx.stride, ctx.lo = x.shape, stride, lo
        ctx.layout = torch.channels_last if cl else torch.contiguous_format
        return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, lo, hi))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        s, lo, c = ctx.stride, ctx.lo, ctx.shape[1]
        gx = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout).zero_()
        gx[:, :, ::s, ::s] = grad[:, lo : lo + c]
        return gx, None, None, None


def option_a_shortcut(x: Tensor, stride: int, lo: int, hi: int) -> Tensor:
    """(N, C, H, W) -> (N, lo + C + hi, H / stride, W / stride); see _OptionAShortcut (used only when autograd
    records)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _OptionAShortcut.apply(x, stride, lo, hi)
    return F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, lo, hi))


class KeepInputLayout(torch.autograd.Function):
    """Identity whose backward hands the gradient back in the input's own memory layout. Without it, the gradient
    w.r.t. an NCHW-contiguous image comes back channels_last (it flows from the channels_last stem conv), and attack
    code that calls .view on it fails (torchattacks.PGDL2: "view size is not compatible with input tensor's size and
    stride"). One (N, 3, S, S) copy per backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        ctx.layout = torch.channels_last if cl else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous(memory_format=ctx.layout)


@dataclass
class PathOutput:
    """Everything one forward pass knows about the calculation path (L = number of gated convs)."""

    logits: Tensor  # (N, K)
    features: Tensor  # (N, C_last) penultimate, after global pooling
    z: list[Tensor] = field(default_factory=list)  # L x (N, C_l): binary at eval; straight-through in training
    s: list[Tensor] = field(default_factory=list)  # L x (N, C_l): gate logits before binarisation
    # L x (N, C_l): spatial mean of relu(BN output), unmasked; only for forward_paths(x, energy=True) (the KL loss),
    # None otherwise: a ReLU unit has it for free, the others (one per block) would pay a ReLU + mean over their output
    energy: list[Tensor] | None = None


class GateControls:
    """The gate settings every family shares, over its units(): SemHash in training, gradients through the gates in
    eval mode for adaptive attackers."""

    def set_gate_training(self, noise_std: float, p_hard: float) -> None:
        """SemHash settings used in training mode (eval mode is always z = 1(s > 0))."""
        for u in self.units():
            u.noise_std, u.p_hard = noise_std, p_hard

    @contextmanager
    def relaxed_paths(self, relax: str | float) -> Iterator[None]:
        """Within this block, eval-mode gates pass a gradient: "st" keeps z's exact binary value and passes v1's
        gradient (straight-through); a temperature T makes z = sigmoid(s / T) (see gates.semhash)."""
        units = self.units()
        for u in units:
            u.relax = relax
        try:
            yield
        finally:
            for u in units:
                u.relax = None

    def straight_through_paths(self) -> AbstractContextManager[None]:
        """relaxed_paths("st"): the exact eval-time paths, with v1's gradient."""
        return self.relaxed_paths("st")
