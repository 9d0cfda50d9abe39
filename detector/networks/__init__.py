"""Gated networks: the interface (protocol.py), the families (resnet_cifar.py, vgg.py), decouple() for any CNN, the
registry that builds them by name, and per-path MAC accounting (macs.py)."""

from .decouple import GatedNet, decouple
from .layers import PathOutput, spatial_mean
from .protocol import Cost, GatedNetwork
from .registry import PRESETS, arch_config, build_model, register
from .resnet_cifar import CifarResNet, ConvUnit

__all__ = [
    "PRESETS",
    "CifarResNet",
    "ConvUnit",
    "Cost",
    "GatedNet",
    "GatedNetwork",
    "PathOutput",
    "arch_config",
    "build_model",
    "decouple",
    "register",
    "spatial_mean",
]
