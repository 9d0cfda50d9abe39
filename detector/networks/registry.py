"""Which network a name builds: families (one builder each, from a ModelConfig), the presets a user names on the
command line (`dnd train --arch resnet56`), and a user's own builder as "package.module:function".

A user's builder is called as function(num_classes=K) and returns a dense nn.Module CNN on normalised images with a
final nn.Linear; decouple() gates it. A bundle records the "package.module:function" string, so loading that bundle
imports the module: load bundles of your own builders, as you would run your own code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import replace

from ..config import ModelConfig
from .decouple import GatedNet
from .protocol import GatedNetwork
from .resnet_cifar import CifarResNet
from .vgg import STAGE_DEPTHS, VGG, WIDTHS

FAMILIES: dict[str, Callable[[ModelConfig], GatedNetwork]] = {}


def register(family: str) -> Callable[[Callable[[ModelConfig], GatedNetwork]], Callable[[ModelConfig], GatedNetwork]]:
    """@register("name") on a builder ModelConfig -> GatedNetwork makes ModelConfig(arch="name") build it."""

    def add(fn: Callable[[ModelConfig], GatedNetwork]) -> Callable[[ModelConfig], GatedNetwork]:
        FAMILIES[family] = fn
        return fn

    return add


@register("cifar_resnet")
def _cifar_resnet(cfg: ModelConfig) -> GatedNetwork:
    return CifarResNet(cfg)


@register("vgg")
def _vgg(cfg: ModelConfig) -> GatedNetwork:
    return GatedNet(VGG(cfg.widths, cfg.stage_depths, cfg.num_classes), cfg)


# --arch names -> the ModelConfig fields they set (the rest: data-derived classes, size, mean / std; gate settings)
PRESETS: dict[str, dict[str, object]] = {
    **{
        f"resnet{6 * n + 2}": {"arch": "cifar_resnet", "widths": (16, 32, 64), "blocks_per_stage": n}
        for n in (3, 5, 7, 9, 18)
    },
    **{f"vgg{d}": {"arch": "vgg", "widths": WIDTHS, "stage_depths": depths} for d, depths in STAGE_DEPTHS.items()},
}


def arch_config(name: str, base: ModelConfig = ModelConfig()) -> ModelConfig:
    """`base` with the architecture `name` names: a preset, or a user's "package.module:function" builder."""
    if name in PRESETS:
        return replace(base, **PRESETS[name])
    if ":" in name:
        _user_builder(name)  # a clear error now, not after the data has loaded
        return replace(base, arch=name)
    raise ValueError(f"unknown architecture {name!r}: expected one of {sorted(PRESETS)} or 'package.module:function'")


def _user_builder(arch: str) -> Callable[..., object]:
    module, _, fn = arch.partition(":")
    try:
        builder = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"architecture {arch!r}: cannot import {fn} from {module} ({e})") from e
    if not callable(builder):
        raise ValueError(f"architecture {arch!r}: {fn} is not callable")
    return builder


def build_model(cfg: ModelConfig) -> GatedNetwork:
    """The (decoupled if cfg.decoupled) network cfg describes, freshly initialised."""
    if cfg.arch in FAMILIES:
        return FAMILIES[cfg.arch](cfg)
    if ":" in cfg.arch:
        return GatedNet(_user_builder(cfg.arch)(num_classes=cfg.num_classes), cfg)
    raise ValueError(
        f"unknown architecture {cfg.arch!r}: expected one of {sorted(FAMILIES)} or 'package.module:function'"
    )
