"""Service settings, from environment variables with the DND_ prefix (pydantic-settings)."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DND_", protected_namespaces=())

    model_dir: Path = Path("models/resnet20-decoupled")  # bundle with profiles.safetensors (`dnd profiles`)
    threshold: float | None = None      # overrides the bundle's calibrated threshold
    max_batch: int = Field(64, ge=1)    # images per forward pass of the micro-batcher
    max_wait_ms: float = Field(2.0, ge=0)  # how long the batcher waits for more requests before running
    max_images: int = Field(64, ge=1)   # images per request (JSON batches)
    body_limit: int = Field(5 * 1024 * 1024, ge=1)  # bytes per request body; larger bodies get 413 before being read
    max_image_pixels: int = Field(4096 * 4096, ge=1)  # decoded width x height above which an image is refused
    api_key: str | None = None          # enables POST /admin/reload (header X-API-Key); unset = route disabled
    # torch intra-op threads. 1 on a 2-core machine leaves a core to HTTP: p99 at concurrency 8 was 45 ms with 1 thread
    # and 76 ms with 2; throughput at concurrency 64 was 320 vs 415 images/s (bench/serve.py).
    threads: int = Field(1, ge=1)
    device: str = "cpu"
    trace: bool = True                  # TorchScript forward (releases the GIL while a batch runs); see Detector.trace
