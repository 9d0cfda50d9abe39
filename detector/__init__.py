"""Dynamic Neural Network Decoupling (Li et al., arXiv 1906.01166): gated CNNs whose per-input calculation paths are
used to flag adversarial inputs. Importing this package does no work (no model loading, no CUDA)."""

from .api import Detector, Prediction, load_detector
from .bundle import load_model, save_bundle
from .config import ModelConfig
from .networks import CifarResNet, GatedNetwork, PathOutput, arch_config, build_model, decouple

__all__ = [
    "CifarResNet",
    "Detector",
    "GatedNetwork",
    "ModelConfig",
    "PathOutput",
    "Prediction",
    "arch_config",
    "build_model",
    "decouple",
    "load_detector",
    "load_model",
    "save_bundle",
]
