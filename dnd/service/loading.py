"""Loading the served detector (at start and on /admin/reload)."""

from __future__ import annotations

from detector.api import Detector, load_detector
from detector.engines import pick_engine

from .settings import Settings


def load(settings: Settings) -> Detector:
    """The bundle as the service runs it: traced, on the engine the settings name, or on the faster one ("auto")."""
    engine = "masked" if settings.engine == "auto" else settings.engine
    det = load_detector(settings.model_dir, settings.device, settings.threshold, engine)
    if not det.supports(engine):
        raise ValueError(f"DND_ENGINE={engine}: {type(det.model).__name__} has no such engine; use masked or auto")
    if settings.trace:
        det.trace()
    if settings.engine == "auto":
        pick_engine(det)
    return det
