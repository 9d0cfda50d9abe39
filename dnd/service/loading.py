"""Loading the served detector (at start and on /admin/reload)."""

from __future__ import annotations

from detector.api import Detector, load_detector

from .settings import Settings


def load(settings: Settings) -> Detector:
    det = load_detector(settings.model_dir, settings.device, settings.threshold)
    return det.trace() if settings.trace else det
