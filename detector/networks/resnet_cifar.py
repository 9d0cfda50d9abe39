"""CIFAR ResNet (He et al. 2016, option-A shortcuts) with optional per-conv gates (DND): ResNet-20/32/44/56/110.

`model(x)` takes images in [0, 1], (N, 3, S, S), and returns logits (N, K) only, so attack libraries
use it unwrapped. `model.forward_paths(x)` also returns the calculation path z of every gated conv. Written by hand
(not through decouple()) so that each block's two units share their pooled activations and the open-filters-only
engine (detector/sparse.py) knows the block structure; it satisfies GatedNetwork like every other family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..gates import Gate, semhash
from .layers import GateControls, KeepInputLayout, PathOutput, option_a_shortcut, spatial_mean
from .protocol import Cost


class ConvUnit(nn.Module):
    """3x3 conv + BN (+ ReLU if `relu`), its output channels masked by a gate that reads the conv's input."""

    def __init__(self, cin: int, cout: int, stride: int, out_hw: int, cfg: ModelConfig, relu: bool) -> None:
        super().__init__()
        self.cin, self.cout, self.out_hw, self.relu = cin, cout, out_hw, relu
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.noise_std, self.p_hard = cfg.gate_noise_std, 0.5  # training-time SemHash settings (see gates.py)
        self.relax: str | float | None = None  # eval-time gradient through z (adaptive attacks); gates.semhash
        self.gate = Gate(cin, cout, cfg.gate_reduction, cfg.gate_bias_init) if cfg.decoupled else None

    def forward(
        self, x: Tensor, rec: PathOutput | None = None, x_pooled: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """x (N, C_in, H, W) -> (output (N, C_out, H', W'), its spatial mean (N, C_out) when known for free).

        x_pooled, if given, is x's spatial mean, so the gate need not pool x again."""
        y = self.bn(self.conv(x))
        a = F.relu(y) if self.relu else y
        if self.gate is None:
            return a, None
        s = self.gate(spatial_mean(x) if x_pooled is None else x_pooled)
        z = semhash(s, self.noise_std, self.training, self.p_hard, self.relax)
        # mean(relu(y) * z) == mean(relu(y)) * z as z is constant per channel: the next gate's input, for free
        a_pooled = spatial_mean(a) if self.relu else None
        if rec is not None:
            rec.s.append(s)
            rec.z.append(z)
            if rec.energy is not None:
                rec.energy.append(a_pooled if a_pooled is not None else spatial_mean(F.relu(y)))
        return a * z[:, :, None, None], (a_pooled * z if a_pooled is not None else None)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, out_hw: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.unit1 = ConvUnit(cin, cout, stride, out_hw, cfg, relu=True)
        self.unit2 = ConvUnit(cout, cout, 1, out_hw, cfg, relu=False)  # its ReLU comes after the residual add
        self.stride = stride
        self.pad = cout - cin  # option A: identity shortcut, subsampled and zero-padded in channels

    def forward(self, x: Tensor, rec: PathOutput | None = None) -> Tensor:
        h, h_pooled = self.unit1(x, rec)
        h, _ = self.unit2(h, rec, h_pooled)
        sc = x
        if self.stride != 1 or self.pad:
            sc = option_a_shortcut(x, self.stride, self.pad // 2, self.pad - self.pad // 2)
        return F.relu(h + sc)


class CifarResNet(GateControls, nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True))
        blocks, cin, hw = [], w0, cfg.input_size
        for i, w in enumerate(cfg.widths):
            for j in range(cfg.blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                hw //= stride
                blocks.append(BasicBlock(cin, w, stride, hw, cfg))
                cin = w
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, cfg.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def units(self) -> list[ConvUnit]:
        """The gateable convs in forward order (2 per block; 18 for ResNet-20)."""
        return [u for b in self.blocks for u in (b.unit1, b.unit2)]

    def costs(self) -> list[Cost]:
        """The stem and the FC always run in full; a block's first conv reads the (dense) residual stream, its second
        conv reads only the first conv's open filters."""
        stem, size = self.stem[0], self.cfg.input_size
        out = [Cost(stem.in_channels, stem.out_channels, 9, size * size, in_area=size * size)]
        for i, u in enumerate(self.units()):
            in_area = (u.out_hw * u.conv.stride[0]) ** 2
            out.append(Cost(u.cin, u.cout, 9, u.out_hw**2, in_area=in_area, unit=i, source=i - 1 if i % 2 else None))
        return [*out, Cost(self.fc.in_features, self.fc.out_features, 1, 1)]

    def stages(self) -> list[nn.Module]:
        """The stem and every block: the layers the feature-space baselines read."""
        return [self.stem, *self.blocks]

    def _run(self, x: Tensor, rec: PathOutput | None) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled() and x.requires_grad:  # attacks: the input gradient in the input's layout
            x = KeepInputLayout.apply(x)
        h = self.stem((x - self.mean) / self.std)
        for b in self.blocks:
            h = b(h, rec)
        feats = spatial_mean(h)
        return self.fc(feats), feats

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, None)[0]

    def forward_paths(self, x: Tensor, energy: bool = False) -> PathOutput:
        """Logits, penultimate features and the calculation path; with energy=True also each gated layer's pooled
        activation energy, which only the training loss (L_kl) needs: it costs ~2-3% of the forward pass (measured)."""
        rec = PathOutput(logits=torch.empty(0), features=torch.empty(0), energy=[] if energy else None)
        rec.logits, rec.features = self._run(x, rec)
        return rec
