"""Offline evaluation of the detector (`dnd evaluate`): protocol, detectors compared, statistics, report."""

from .config import EvalConfig
from .detectors import DETECTORS
from .protocol import evaluate

__all__ = ["DETECTORS", "EvalConfig", "evaluate"]
