"""The networks a run's transferred attacks are crafted on.

A transferred attack (AttackSpec.transfer) is crafted on another network and judged on the attacked one. Which
network: the run's `--source` bundle, or the attack's own, named after an "@" (`transfer-ti@models/vgg19-dense`:
TI-DIM crafted on another architecture). Caches key such an attack by its source's weights, so another source crafts
again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .attacks import attack_spec, split_name
from .bundle import WEIGHTS, file_sha256, load_model


class TransferSources:
    """The networks a run's transferred attacks are crafted on: NAME@PATH's PATH, else the run's `default` bundle;
    each loaded once, on first use. A source whose classes are not the attacked network's is refused, since its
    attacks would aim at other labels."""

    def __init__(self, default: str, classes: tuple[str, ...], device: str | torch.device = "cpu") -> None:
        self.default, self.classes, self.device = default, tuple(classes), device
        self._loaded: dict[str, torch.nn.Module] = {}

    def path(self, name: str) -> str | None:
        """The bundle attack `name` is crafted on; None for an attack run on the attacked network itself."""
        return (split_name(name)[1] or self.default) if attack_spec(name).transfer else None

    def network(self, name: str) -> torch.nn.Module | None:
        if (path := self.path(name)) is None:
            return None
        if path not in self._loaded:
            net = load_model(path, self.device)
            if tuple(net.cfg.classes) != self.classes:
                raise ValueError(
                    f"attack {name!r}: its source {path} predicts {list(net.cfg.classes)}, the attacked network "
                    f"{list(self.classes)}; a transferred attack needs a source with the same classes"
                )
            self._loaded[path] = net
        return self._loaded[path]

    def key(self, name: str) -> dict[str, str]:
        """A cache key part: the weights a transferred attack was crafted on (empty for the others)."""
        path = self.path(name)
        return {"source": file_sha256(Path(path) / WEIGHTS)} if path is not None else {}
