"""Detector-aware (adaptive) attacks and the robust-accuracy-with-rejection evaluation they feed."""

from .evaluation import AdaptiveConfig, robust_report
from .objective import DetectorObjective
from .pgd import adaptive_pgd
from .square import DetectorAwareSquare

__all__ = ["AdaptiveConfig", "DetectorAwareSquare", "DetectorObjective", "adaptive_pgd", "robust_report"]
