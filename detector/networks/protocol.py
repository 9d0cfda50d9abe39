"""GatedNetwork: what every part of the library, the CLI and the service program against.

A gated network is an `nn.Module` CNN whose gated convs (its *units*) choose, per input, which of their output filters
run. Every family satisfies it: the hand-written CIFAR ResNets (resnet_cifar.py) and any CNN passed through
`decouple()` (decouple.py), VGG among them. What the rest of the code may rely on is exactly this:

    model(x) -> logits (N, K)                 x: float images (N, 3, S, S) in [0, 1], S = model.cfg.input_size
    model.forward_paths(x, energy) -> PathOutput: logits, penultimate features, z and s per unit (L x (N, C_l))
    model.units() -> the gated convs in forward order; each has .cout (its width), .cin, .gate (None when dense)
    model.costs() -> every weighted layer's MAC accounting, tied to the units that mask its inputs and outputs
    model.stages() -> the modules whose outputs the feature-space baselines (Mahalanobis, LID) read
    model.set_gate_training(noise_std, p_hard); model.relaxed_paths(relax); model.straight_through_paths()
    model.cfg -> ModelConfig: architecture, classes, input size, normalisation (what a bundle records)
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from torch import Tensor, nn

if TYPE_CHECKING:
    from ..config import ModelConfig
    from .layers import PathOutput


@dataclass(frozen=True)
class Cost:
    """One weighted layer's multiply-accumulates per image: in_ch * out_ch * kernel_area / groups * out_area, where a
    gated unit's closed filters drop out of out_ch (`unit`) and the closed filters of the unit whose masked output the
    layer reads drop out of in_ch (`source`). A Linear layer is kernel_area = out_area = 1."""

    in_ch: int
    out_ch: int
    kernel_area: int
    out_area: int
    groups: int = 1
    in_area: int = 0  # the input's H * W (what a gate pools); 0 for a Linear layer
    unit: int | None = None  # index in units() whose z masks this layer's outputs
    source: int | None = None  # index in units() whose z masks this layer's inputs (None: its input is dense)


class GatedUnit(Protocol):
    """One gated conv: its widths, its gate (None in a dense network) and its SemHash settings (detector/gates.py)."""

    cin: int
    cout: int
    gate: nn.Module | None
    noise_std: float
    p_hard: float
    relax: str | float | None


@runtime_checkable
class GatedNetwork(Protocol):
    """See the module docstring. Implementations are nn.Modules; the protocol lists what callers use beyond that."""

    cfg: ModelConfig

    def __call__(self, x: Tensor) -> Tensor: ...

    def forward_paths(self, x: Tensor, energy: bool = False) -> PathOutput: ...

    def units(self) -> list[GatedUnit]: ...

    def costs(self) -> list[Cost]: ...

    def stages(self) -> list[nn.Module]: ...

    def set_gate_training(self, noise_std: float, p_hard: float) -> None: ...

    def relaxed_paths(self, relax: str | float) -> AbstractContextManager[None]: ...

    def straight_through_paths(self) -> AbstractContextManager[None]: ...
