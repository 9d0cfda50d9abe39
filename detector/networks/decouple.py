"""decouple(): the paper's method as a function on any torch.fx-traceable CNN.

Every nn.Conv2d except the first and the last (in forward order) gets an architecture-controlling module (a Gate):
it reads the spatial mean of the conv's input and decides per image which of the conv's output filters run. The
mask lands after the conv's BatchNorm when the conv feeds one (a closed filter's output is then exactly 0, so the
ReLU, pooling and the next conv see nothing of it), else on the conv's output.

The surgery is done on the torch.fx graph of the user's module, not with hooks: the rewritten graph returns
(logits, penultimate features, z, s, energies) as plain values, so it deep-copies, traces (torch.jit.trace) and
compiles like any module, and the user's weights keep their names under `net.` (a dense checkpoint of the same
builder loads into the decoupled network; only `net.gated.*.gate.*` is new).
"""

from __future__ import annotations

import operator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..config import ModelConfig
from ..gates import Gate, semhash
from .layers import GateControls, KeepInputLayout, PathOutput, spatial_mean
from .protocol import Cost

# Ops that map a zero channel to a zero channel, so a conv behind them still reads only the open filters of the unit
# in front of them (MAC accounting: Cost.source).
_ZERO_KEEPING_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Hardtanh,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_ZERO_KEEPING_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.gelu, F.silu, F.max_pool2d, F.avg_pool2d, F.dropout}
_ZERO_KEEPING_METHODS = {"relu", "relu_", "contiguous"}


class GatedConv(nn.Module):
    """One gated conv of a decoupled network: its gate and SemHash settings (detector/gates.py). The conv and its
    BatchNorm stay where the user's module has them; this module takes their output y (N, C_out, H, W) and the conv's
    input x (N, C_in, H', W') and returns (y masked by z, z (N, C_out), gate logits s (N, C_out), the KL energy
    spatial_mean(relu(y)) (N, C_out) or None). Without a gate (a dense network) it returns y unchanged and Nones."""

    def __init__(self, conv: nn.Conv2d, cfg: ModelConfig) -> None:
        super().__init__()
        self.cin, self.cout = conv.in_channels, conv.out_channels
        self.noise_std, self.p_hard = cfg.gate_noise_std, 0.5
        self.relax: str | float | None = None
        self.energy = False  # set by forward_paths(energy=True): only the training loss reads it
        self.gate = Gate(self.cin, self.cout, cfg.gate_reduction, cfg.gate_bias_init) if cfg.decoupled else None

    def forward(self, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        if self.gate is None:
            return y, None, None, None
        s = self.gate(spatial_mean(x))
        z = semhash(s, self.noise_std, self.training, self.p_hard, self.relax)
        e = spatial_mean(F.relu(y)) if self.energy else None
        return y * z[:, :, None, None], z, s, e


def _is_module(gm: fx.GraphModule, node: fx.Node, kind: type | tuple[type, ...]) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), kind)


def _rewrite(gm: fx.GraphModule, cfg: ModelConfig, skip_first: bool, skip_last: bool) -> None:
    """Insert a GatedConv after every conv but the first and last (after its BatchNorm if it feeds one) and make the
    graph return (logits, features, zs, ss, es)."""
    g = gm.graph
    convs = [n for n in g.nodes if _is_module(gm, n, nn.Conv2d)]
    linears = [n for n in g.nodes if _is_module(gm, n, nn.Linear)]
    if len(convs) < 1 + skip_first + skip_last:
        raise ValueError(f"decouple() needs at least {1 + skip_first + skip_last} convolutions, found {len(convs)}")
    if not linears:
        raise ValueError("decouple() needs a final nn.Linear classifier (its input is the penultimate feature)")
    gated = convs[int(skip_first) : len(convs) - int(skip_last)]
    zs, ss, es = [], [], []
    for i, conv in enumerate(gated):
        users = list(conv.users)
        after = users[0] if len(users) == 1 and _is_module(gm, users[0], nn.BatchNorm2d) else conv
        gm.add_submodule(f"gated.{i}", GatedConv(gm.get_submodule(str(conv.target)), cfg))
        with g.inserting_after(after):
            call = g.call_module(f"gated.{i}", (after, conv.args[0]))
        with g.inserting_after(call):
            parts = [g.call_function(operator.getitem, (call, k)) for k in range(4)]
        after.replace_all_uses_with(parts[0], delete_user_cb=lambda user, c=call: user is not c)
        zs.append(parts[1])
        ss.append(parts[2])
        es.append(parts[3])
    out = next(n for n in g.nodes if n.op == "output")
    logits = out.args[0]
    out.args = ((logits, linears[-1].args[0], tuple(zs), tuple(ss), tuple(es)),)
    g.lint()
    gm.recompile()


def _source(gm: fx.GraphModule, node: fx.Node) -> int | None:
    """The index of the GatedConv whose masked output reaches `node` through zero-keeping ops only, else None."""
    while True:
        if node.op == "call_function" and node.target is operator.getitem and node.args[1] == 0:
            parent = node.args[0]
            if isinstance(parent, fx.Node) and parent.op == "call_module" and str(parent.target).startswith("gated."):
                return int(str(parent.target).split(".")[1])
        keeps = (
            _is_module(gm, node, _ZERO_KEEPING_MODULES)
            or (node.op == "call_function" and node.target in _ZERO_KEEPING_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ZERO_KEEPING_METHODS)
        )
        if not keeps or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]


class GatedNet(GateControls, nn.Module):
    """A user's CNN, decoupled (or dense, with the same units but no gates): satisfies GatedNetwork. Takes [0, 1]
    images and normalises them by cfg.mean / cfg.std before the user's module sees them."""

    def __init__(self, net: nn.Module, cfg: ModelConfig, skip_first: bool = True, skip_last: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))
        try:
            gm = fx.symbolic_trace(net)
        except Exception as e:  # fx raises several types; all mean the same to the user
            raise ValueError(
                f"decouple() rewrites the module's torch.fx graph, and {type(net).__name__} cannot be traced "
                f"symbolically ({type(e).__name__}: {e}); control flow that depends on tensor values is the usual cause"
            ) from e
        _rewrite(gm, cfg, skip_first, skip_last)
        self.net = gm
        self._costs = self._measure(gm)

    def _measure(self, gm: fx.GraphModule) -> list[Cost]:
        """Every conv's and Linear's Cost, output sizes from one probe forward at cfg.input_size (in eval mode)."""
        was = gm.training
        size = self.cfg.input_size
        with torch.no_grad():
            ShapeProp(gm.eval()).propagate(torch.zeros(1, 3, size, size))
        gm.train(was)
        unit_of: dict[fx.Node, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module" and str(n.target).startswith("gated."):
                front = n.args[0]  # the conv's BatchNorm, or the conv itself
                unit_of[front if _is_module(gm, front, nn.Conv2d) else front.args[0]] = int(str(n.target).split(".")[1])
        costs = []
        for n in gm.graph.nodes:
            if _is_module(gm, n, nn.Conv2d):
                m, shape = gm.get_submodule(str(n.target)), n.meta["tensor_meta"].shape
                in_shape = n.args[0].meta["tensor_meta"].shape
                kernel, area = m.kernel_size[0] * m.kernel_size[1], shape[2] * shape[3]
                in_area, src = in_shape[2] * in_shape[3], _source(gm, n.args[0])
                costs.append(Cost(m.in_channels, m.out_channels, kernel, area, m.groups, in_area, unit_of.get(n), src))
            elif _is_module(gm, n, nn.Linear):
                m = gm.get_submodule(str(n.target))
                costs.append(Cost(m.in_features, m.out_features, 1, 1))
        return costs

    def units(self) -> list[GatedConv]:
        gated = self.net.get_submodule("gated")  # children "0", "1", ... in forward order
        return [gated.get_submodule(str(i)) for i in range(len(gated._modules))]

    def costs(self) -> list[Cost]:
        return list(self._costs)

    def stages(self) -> list[nn.Module]:
        """The module in front of each gate (its BatchNorm, or the conv): what the feature-space baselines read."""
        mods = dict(self.net.named_modules())
        return [
            mods[str(n.args[0].target)]
            for n in self.net.graph.nodes
            if n.op == "call_module" and str(n.target).startswith("gated.")
        ]

    def _run(self, x: Tensor) -> tuple[Tensor, Tensor, tuple, tuple, tuple]:
        if torch.is_grad_enabled() and x.requires_grad:
            x = KeepInputLayout.apply(x)
        return self.net((x - self.mean) / self.std)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x)[0]

    def forward_paths(self, x: Tensor, energy: bool = False) -> PathOutput:
        units = self.units()
        for u in units:
            u.energy = energy
        try:
            logits, feats, zs, ss, es = self._run(x)
        finally:
            for u in units:
                u.energy = False
        keep = [i for i, z in enumerate(zs) if z is not None]
        return PathOutput(
            logits=logits,
            features=torch.flatten(feats, 1),
            z=[zs[i] for i in keep],
            s=[ss[i] for i in keep],
            energy=[es[i] for i in keep] if energy else None,
        )


def decouple(
    net: nn.Module, cfg: ModelConfig | None = None, skip_first: bool = True, skip_last: bool = True
) -> GatedNet:
    """The paper's method on a user's CNN: gate every Conv2d but the first and the last (see the module docstring).
    `net` takes normalised images and returns logits from a final nn.Linear. `cfg` records what a bundle needs
    (arch as "package.module:function", classes, input size, mean and std); by default a 10-class, 32-pixel
    CIFAR-normalised config named after the module's class."""
    if cfg is None:
        cfg = ModelConfig(arch=f"{type(net).__module__}:{type(net).__name__}")
    return GatedNet(net, replace(cfg, decoupled=True), skip_first, skip_last)
