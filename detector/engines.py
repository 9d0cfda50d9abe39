"""Which forward a detector runs: the masked network or the open-filters engine, whichever is faster on this machine.

Both give the same logits and paths (tests check it); only the time differs, and which one wins depends on the
network and the input size, not on a rule one can write down. Measured with `bench/inference.py` at batch 1 on one
thread: the open-filters engine ran VGG-19 1.08x faster than dense at 32 px and 1.51x at 96 px, but ResNet-56 at
0.80x. So the service times both on the loaded bundle at start (`pick_engine`) and serves the faster one.

The timing is what a request costs: `Detector.predict` of one image (stacked with its consistency transforms), on one
thread as the service's micro-batcher runs small batches, after a warm-up, engines interleaved so that a burst of
load elsewhere on the machine hits both alike; the median of `repeats` runs decides.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .api import Detector

ENGINES = ("masked", "sparse")  # every filter computed then masked / only the open filters computed


@dataclass(frozen=True)
class EngineChoice:
    engine: str  # the faster engine, now in use
    ms: dict[str, float] = field(default_factory=dict)  # engine -> median ms per one-image predict
    batch: int = 1

    def as_dict(self) -> dict[str, object]:
        return {"engine": self.engine, "batch": self.batch, "median_ms": {k: round(v, 3) for k, v in self.ms.items()}}


def probe_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) smooth random images in [0, 1]. Pixel noise opens unusual paths; upsampled 4 x 4 noise is
    closer to a photograph's low-frequency content, so the open-filter counts are closer to what real inputs open."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def pick_engine(
    det: Detector, candidates: tuple[str, ...] = ENGINES, repeats: int = 15, batch: int = 1
) -> EngineChoice:
    """Time `det.predict` on `batch` images under each candidate engine and switch `det` to the fastest. Engines the
    network has none of (open_filters_engine raises) are skipped; with one candidate left, nothing is timed."""
    usable = [e for e in candidates if det.supports(e)]
    if not usable:
        raise ValueError(f"none of the engines {candidates} runs {type(det.model).__name__}")
    if len(usable) == 1:
        return _chose(det, EngineChoice(usable[0], {}, batch))
    x = probe_images(batch, det.image_shape[1])
    runs: dict[str, list[float]] = {e: [] for e in usable}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for e in usable:  # warm-up: tracing, first-call allocation, lazy engine construction
            det.use_engine(e)
            for _ in range(3):
                det.predict(x)
        for _ in range(repeats):
            for e in usable:
                det.use_engine(e)
                t0 = time.perf_counter()
                det.predict(x)
                runs[e].append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads)
    ms = {e: statistics.median(v) for e, v in runs.items()}
    return _chose(det, EngineChoice(min(usable, key=lambda e: ms[e]), ms, batch))


def _chose(det: Detector, choice: EngineChoice) -> EngineChoice:
    det.use_engine(choice.engine)
    det.engine_timing = choice.as_dict()  # GET /v1/model reports it
    return choice


__all__ = ["ENGINES", "EngineChoice", "pick_engine", "probe_images"]
