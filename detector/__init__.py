"""Dynamic Neural Network Decoupling (Li et al., arXiv 1906.01166): gated ResNet whose per-input calculation
paths are used to flag adversarial inputs. Importing this package does no work (no model loading, no CUDA)."""

from .api import Detector, Prediction, load_detector
from .bundle import load_model, save_bundle
from .config import ModelConfig
from .model import CifarResNet, PathOutput, build_model

__all__ = [
    "CifarResNet",
    "Detector",
    "ModelConfig",
    "PathOutput",
    "Prediction",
    "build_model",
    "load_detector",
    "load_model",
    "save_bundle",
]
