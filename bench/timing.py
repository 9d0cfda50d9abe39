"""The one timing loop every benchmark here uses: the functions compared run in alternating rounds, so that
machine noise (another process, frequency scaling, the allocator) hits them all alike, and ratios are taken between
medians of the same run."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def alternating(
    fns: dict[str, Callable[[], object]],
    rounds: int,
    calls: int = 1,
    warmup: int = 1,
    sync: Callable[[], object] = lambda: None,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Seconds per call of each function: `warmup` untimed rounds, then `rounds` rounds in which each function runs
    `calls` times in turn. Returns ({name: seconds per call, one per round}, {name: seconds of the first warm-up
    round per call}, which with compilation is the compile time). `sync` waits for queued device work."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    first: dict[str, float] = {}
    for r in range(warmup + rounds):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            dt = (time.perf_counter() - t0) / calls
            if r >= warmup:
                times[name].append(dt)
            elif r == 0:
                first[name] = dt
    return times, first


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in times.items()}
