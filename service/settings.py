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
    threads: int = Field(2, ge=1)       # torch intra-op threads for inference
    device: str = "cpu"
