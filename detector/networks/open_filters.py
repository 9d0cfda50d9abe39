"""The open-filters-only engine for networks made by decouple() (eval only): each gated conv computes just the
filters its gate opens, and a conv that reads them computes on just those input channels.

The decoupled graph masks a gated conv's output after computing every filter. Here its torch.fx graph is rewritten:
- each gated conv (BatchNorm folded in: W' = W g / sqrt(v + eps), b' = beta - mu g / sqrt(v + eps), exact in eval)
  runs its gate first (the gate reads the spatial mean of the conv's input, known before the conv), then the conv on
  the rows of W' of the batch's union of open filters; filters in the union but closed for an image are zeroed;
- its output travels *compact*, (N, k, H, W) with the indices of its k channels, through ops that map a zero channel
  to a zero channel (ReLU, pooling, dropout: decouple._ZERO_KEEPING_*);
- a conv that reads a compact tensor slices its weight's input channels to those k; anything else (a residual sum,
  BatchNorm, the classifier) gets the full tensor back, closed channels as zeros.
Same logits and paths as GatedNet.forward_paths up to float rounding (a test checks it; a gate logit within ~1e-5 of 0
may flip). At batch 1 the union is the image's own path; at larger batches it grows towards every filter.
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .decouple import _ZERO_KEEPING_FUNCTIONS, _ZERO_KEEPING_METHODS, _ZERO_KEEPING_MODULES, GatedNet, _is_module

# Gathering the open filters' weights costs memory traffic, which only pays on large maps: on VGG-19's 2 x 2 and 4 x 4
# maps at batch 1, the gathers (index_select) took more time than the whole dense convolutions they replaced, 9 of the
# engine's 16 ms (torch.profiler, `bench/inference.py --arch vgg19`). So a gated conv computes only its open filters
# when its output map has at least GATHER_MIN_AREA pixels (else every filter, then the mask), and a conv reads only
# the open channels of its input when the input map has at least SLICE_MIN_AREA pixels.
GATHER_MIN_AREA = 64
SLICE_MIN_AREA = 256


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    bias = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels)
    if bn is None:
        return conv.weight.detach(), bias.detach()
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * scale[:, None, None, None]
    return w.detach(), (bn.bias + (bias - bn.running_mean) * scale).detach()


class OpenUnit(nn.Module):
    """A gated conv computing only open filters: (x, cin) -> (y (N, k, H', W'), their indices (k,), s, z). With
    gather=False it computes every filter and masks (y (N, C_out, H', W'), an empty index)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, gate: nn.Module, gather: bool) -> None:
        super().__init__()
        self.gather = gather
        w, b = _fold(conv, bn)
        self.register_buffer("w", w.contiguous())
        self.register_buffer("b", b)
        self.stride, self.padding, self.dilation, self.cin = conv.stride, conv.padding, conv.dilation, conv.in_channels
        self.gate = gate

    def forward(self, x: Tensor, cin: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x (N, C_in, H, W), or only the channels `cin` of the conv's input when cin is given."""
        pooled = x.mean((2, 3))
        if cin is not None:  # the closed input channels are zeros: their mean is 0
            # (x.shape[0], not len(x): torch.jit.trace records the size, not the example's batch)
            pooled = pooled.new_zeros(x.shape[0], self.cin).index_copy(1, cin, pooled)
        s = self.gate(pooled)
        z = s > 0
        w = self.w if cin is None else self.w.index_select(1, cin)
        if not self.gather:
            y = F.conv2d(x, w, self.b, self.stride, self.padding, self.dilation) * z[:, :, None, None].to(x.dtype)
            return y, z.new_zeros(0, dtype=torch.long), s, z.to(x.dtype)
        idx = torch.nonzero(z.any(0)).flatten()
        y = F.conv2d(x, w.index_select(0, idx), self.b.index_select(0, idx), self.stride, self.padding, self.dilation)
        y = y * z.index_select(1, idx)[:, :, None, None].to(y.dtype)
        return y, idx, s, z.to(x.dtype)


class SlicedConv(nn.Module):
    """An ungated conv reading a compact tensor: its weight's input channels sliced to `cin`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor, cin: Tensor) -> Tensor:
        c = self.conv
        return F.conv2d(x, c.weight.index_select(1, cin), c.bias, c.stride, c.padding, c.dilation)


def expand(y: Tensor, idx: Tensor, channels: int) -> Tensor:
    """A compact (N, k, H, W) back to (N, channels, H, W), the channels not in idx zero."""
    return y.new_zeros(y.shape[0], channels, y.shape[2], y.shape[3]).index_copy(1, idx, y)


fx.wrap("expand")


def _keeps_zeros(gm: fx.GraphModule, n: fx.Node) -> bool:
    return (
        _is_module(gm, n, _ZERO_KEEPING_MODULES)
        or (n.op == "call_function" and n.target in _ZERO_KEEPING_FUNCTIONS)
        or (n.op == "call_method" and n.target in _ZERO_KEEPING_METHODS)
    )


class OpenFilterNet(nn.Module):
    """`forward(x)` -> (logits (N, K), penultimate features (N, C), z L x (N, C_l), s L x (N, C_l)), the tuple the
    detector reads, from [0, 1] images; built from a decoupled GatedNet (eval mode), whose gates it shares."""

    def __init__(
        self, model: GatedNet, gather_min_area: int = GATHER_MIN_AREA, slice_min_area: int = SLICE_MIN_AREA
    ) -> None:
        super().__init__()
        if not model.cfg.decoupled:
            raise ValueError("the open-filters engine needs a decoupled network (with gates)")
        model = model.eval()
        self.register_buffer("mean", model.mean)
        self.register_buffer("std", model.std)
        gm = copy.deepcopy(model.net)
        self.net = self._rewrite(gm, model.units(), model.cfg.input_size, gather_min_area, slice_min_area)

    @staticmethod
    def _rewrite(
        gm: fx.GraphModule, units: list[nn.Module], size: int, gather_min_area: int, slice_min_area: int
    ) -> fx.GraphModule:
        """gm: a copy of the GatedNet's graph module; units: the GatedNet's own gated convs, whose gates are shared."""
        g = gm.graph
        with torch.no_grad():
            ShapeProp(gm).propagate(torch.zeros(1, 3, size, size))

        def area(n: fx.Node) -> int:
            shape = n.meta["tensor_meta"].shape
            return shape[2] * shape[3]

        compact: dict[fx.Node, tuple[fx.Node, int]] = {}  # node -> (its channel indices, full channel count)
        for call in [n for n in g.nodes if n.op == "call_module" and str(n.target).startswith("gated.")]:
            front, x_in = call.args
            conv = front if _is_module(gm, front, nn.Conv2d) else front.args[0]
            conv_m = gm.get_submodule(str(conv.target))
            if conv_m.groups != 1:
                raise ValueError(f"the open-filters engine slices channels of ungrouped convs only ({conv.target})")
            bn = None if front is conv else gm.get_submodule(str(front.target))
            name = "open_" + str(call.target).replace(".", "_")
            gather = area(conv) >= gather_min_area
            gate = units[int(str(call.target).split(".")[1])].gate  # the network's own, not the copy's
            gm.add_submodule(name, OpenUnit(conv_m, bn, gate, gather))
            with g.inserting_after(call):
                unit = g.call_module(name, (x_in, None))
            parts, last = [], unit
            for k in range(4):
                with g.inserting_after(last):
                    last = g.call_function(operator.getitem, (unit, k))
                parts.append(last)
            y, idx, s, z = parts
            for user in list(call.users):  # getitems 0, 1, 2: the masked output, z, s (3, the energy: dropped below)
                if user.args[1] != 3:
                    user.replace_all_uses_with({0: y, 1: z, 2: s}[user.args[1]])
            if gather:
                compact[y] = (idx, conv_m.out_channels)
        # the energies (the training loss's) are not computed here; the replaced gated convs, their convs and
        # BatchNorms lose their last users and go at the end
        out = next(n for n in g.nodes if n.op == "output")
        logits, feats, zs, ss, _ = out.args[0]
        out.args = ((logits, feats, zs, ss, ()),)
        for n in list(g.nodes):
            args = [a for a in n.all_input_nodes if a in compact]
            if not args or (not n.users and n.op != "output"):  # (the replaced nodes: dead, removed below)
                continue
            first = n.args[0] if n.args else None
            if first in compact and len(args) == 1 and _keeps_zeros(gm, n):
                compact[n] = compact[first]
            elif n.op == "call_module" and str(n.target).startswith("open_") and area(first) >= slice_min_area:
                n.args = (first, compact[first][0])
                continue
            elif first in compact and len(args) == 1 and _is_module(gm, n, nn.Conv2d):
                conv_m = gm.get_submodule(str(n.target))
                if conv_m.groups == 1 and area(first) >= slice_min_area:
                    name = "sliced_" + str(n.target).replace(".", "_")
                    gm.add_submodule(name, SlicedConv(conv_m))
                    n.target, n.args = name, (first, compact[first][0])
                    continue
                args = [first]
            if n not in compact:
                for a in args:  # the full tensor back for anything that is not channel-wise
                    idx, channels = compact[a]
                    with g.inserting_before(n):
                        full = g.call_function(expand, (a, idx, channels))
                    n.replace_input_with(a, full)
        g.eliminate_dead_code()
        g.lint()
        gm.recompile()
        return gm

    @torch.inference_mode()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        logits, feats, zs, ss, _ = self.net((x - self.mean) / self.std)
        return logits, torch.flatten(feats, 1), list(zs), list(ss)
