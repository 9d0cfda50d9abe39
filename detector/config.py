"""Model settings: one frozen dataclass, stored verbatim in a bundle's config.json."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel statistics of the CIFAR-10 training set; the model normalises internally.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a (possibly decoupled) network, what it labels and how it reads images.

    `arch` picks the family in detector/networks/registry.py, or names a user's builder as "package.module:function"
    (called with num_classes=K; it returns a dense nn.Module CNN that decouple() gates). The registry's names
    (resnet20 ... resnet110, vgg11 ... vgg19) are presets of these fields.
    - cifar_resnet: widths per stage (3), blocks_per_stage; depth = 6 * blocks_per_stage + 2 (ResNet-20: 3).
    - vgg: widths per stage, stage_depths convs per stage, a 2x2 max-pool between stages (VGG-19: 2, 2, 4, 4, 4).
    """

    arch: str = "cifar_resnet"
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32, 64)
    blocks_per_stage: int = 3
    stage_depths: tuple[int, ...] = ()
    input_size: int = 32  # square side in pixels the network reads; images of other sizes are resized to it
    decoupled: bool = False
    # Gate (architecture controlling module): GAP -> FC(C_in -> C_in/r) -> ReLU -> FC(-> C_out).
    gate_reduction: int = 4
    # Initial bias of the gate's last FC. Kept well below the sigmoid's saturation point (x ~ 2.4,
    # where 1.2*sigmoid(x) - 0.1 clips to 1 and the gradient vanishes); see detector/gates.py.
    gate_bias_init: float = 1.0
    # SemHash noise std during training (Kaiser & Bengio 2018 use N(0, 1)).
    gate_noise_std: float = 1.0
    mean: tuple[float, float, float] = CIFAR10_MEAN
    std: tuple[float, float, float] = CIFAR10_STD
    classes: tuple[str, ...] = CIFAR10_CLASSES

    @property
    def depth(self) -> int:
        """Weighted layers on the longest path (the number in the name: ResNet-56, VGG-19)."""
        if self.arch == "vgg":
            return sum(self.stage_depths) + 1
        return 6 * self.blocks_per_stage + 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {sorted(unknown)}; expected a subset of {sorted(names)}")
        # JSON turns tuples into lists; restore them so the dataclass stays hashable.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
