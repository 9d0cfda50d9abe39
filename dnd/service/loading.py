"""Loading the served detector (at start and on /admin/reload)."""

from __future__ import annotations

from typing import Any

from detector.api import Detector, load_detector
from detector.engines import pick_engine

from .settings import Settings

# (architecture, score spec, device) -> the engine "auto" chose and what it measured, for this process. A reload of
# the same architecture (new weights, new profiles) reuses the choice instead of tracing and timing both engines
# again: every traced graph stays in the process (Detector.trace), so re-timing grew resident memory at each reload.
_CHOSEN: dict[tuple[Any, ...], dict[str, Any]] = {}


def load(settings: Settings) -> Detector:
    """The bundle as the service runs it: traced, on the engine the settings name, or on the faster one ("auto")."""
    engine = "masked" if settings.engine == "auto" else settings.engine
    det = load_detector(settings.model_dir, settings.device, settings.threshold, engine)
    if not det.supports(engine):
        raise ValueError(f"DND_ENGINE={engine}: {type(det.model).__name__} has no such engine; use masked or auto")
    if settings.trace:
        det.trace()
    if settings.engine == "auto":
        key = (det.model.cfg, det.spec, str(det.device), settings.trace)
        if key in _CHOSEN:
            det.use_engine(_CHOSEN[key]["engine"])
            det.engine_timing = {**_CHOSEN[key], "reused": True}
        else:
            _CHOSEN[key] = pick_engine(det).as_dict()
    return det
