"""Service settings, from environment variables with the DND_ prefix (pydantic-settings). A value out of range stops
the service at start, with pydantic's message naming the setting."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DND_", protected_namespaces=(), frozen=True)

    model_dir: Path = Path("models/resnet20-decoupled")  # bundle with profiles.safetensors (`dnd profiles`)
    # overrides the calibrated threshold (attack_score scale, README); NaN would flag nothing
    threshold: float | None = Field(None, allow_inf_nan=False)
    max_batch: int = Field(64, ge=1)  # images per forward pass of the micro-batcher
    # How long the batcher waits for more requests before running. 0: it takes what queued while the last batch ran,
    # and under load that is the batch. `bench/serve.py`, 2 runs each on 2 cores, 0 against 2 ms: p99 at concurrency
    # 1 13.6-15.0 against 18.3-23.1 ms, at 8 47.9-51.7 against 54.3-56.0 ms (path-only profiles 26-35 against
    # 36-38), at 64 the same throughput (371-400 against 347-402 img/s) and a p99 5-15% higher.
    max_wait_ms: float = Field(0.0, ge=0)
    max_images: int = Field(64, ge=1)  # images per request (JSON batches)
    body_limit: int = Field(5 * 1024 * 1024, ge=1)  # bytes per request body; larger bodies get 413 before being read
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # decoded width x height above which an image is refused
    api_key: str | None = None  # enables POST /admin/reload (header X-API-Key); unset = route disabled
    # torch intra-op threads, chosen per batch. A small batch runs on one thread and leaves the other cores to HTTP
    # (2 cores, fixed 2 threads: p99 at concurrency 8 was 76 ms vs 45 ms with 1); a large batch, which only comes
    # when many requests wait, runs on `threads` (fixed 1 thread: 320 images/s at concurrency 64 vs 415 with 2).
    threads: int = Field(
        default_factory=lambda: len(os.sched_getaffinity(0)), ge=1
    )  # for batches >= parallel_min_batch
    parallel_min_batch: int = Field(16, ge=1)  # smaller batches run on a single thread
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$")  # refused at start-up, not when the model loads
    # which forward serves: "auto" times the masked network and the open-filters engine on the bundle at start and
    # keeps the faster (detector/engines.py; GET /v1/model says which and what it measured)
    engine: Literal["auto", "masked", "sparse"] = "auto"
    trace: bool = True  # TorchScript forward (releases the GIL while a batch runs); see Detector.trace
    # Request bodies are parsed and decoded in this many threads, off the event loop: a request of 64 large images
    # then delays other requests by its queue position, not /healthz by its decoding time.
    decode_threads: int = Field(2, ge=1)
    header_timeout_s: float = Field(
        10.0, gt=0
    )  # a request's head must arrive within this (slowloris connections close)
    body_timeout_s: float = Field(30.0, gt=0)  # and its body within this (408 otherwise)
    workers: int = Field(1, ge=1)  # uvicorn worker processes (`dnd serve`); each loads the bundle
