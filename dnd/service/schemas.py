"""What the OpenAPI schema says of bodies: the image request bodies (which the routes read themselves, so FastAPI
cannot infer them) and the response models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

_BINARY = {"schema": {"type": "string", "format": "binary"}}
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": (
            "One image (PNG, JPEG, BMP, GIF, TIFF or WebP) as the raw body or as multipart field `file`, or a JSON "
            "batch of "
            "base64 images. Images of another size than the network's (GET /v1/model: input_shape) are resized."
        ),
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["images"],
                    "properties": {
                        "images": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "byte"}}
                    },
                }
            },
        },
    }
}


class ModelRef(BaseModel):
    name: str
    weights_sha256: str


class Divergence(BaseModel):
    hamming: list[float] = Field(
        description="per gated layer: share of filters whose state differs from the predicted class's signature"
    )
    jaccard: list[float]


class Item(BaseModel):
    """One image's answer; which fields are present depends on the route (and `explain`)."""

    label: str | None = None
    class_index: int | None = None
    probabilities: dict[str, float] | None = None
    attack_score: float | None = Field(None, description="higher = more likely attacked")
    is_adversarial: bool | None = Field(None, description="attack_score > threshold")
    threshold: float | None = None
    per_layer_divergence: Divergence | None = None
    active_filters: list[list[int]] | None = Field(None, description="the calculation path: open filters per layer")
    resized_from: list[int] | None = Field(None, description="original [width, height] when the image was resized")


class Predictions(BaseModel):
    model: ModelRef
    predictions: list[Item]
