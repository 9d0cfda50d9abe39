"""A bundle's sample images (BUNDLE/samples/): a few clean test images of its own data and PGD-attacked ones, made on
its own weights by `dnd samples`, which the web page offers to click. They live in the bundle because they belong
to it: a page serving another network, or other classes, must not offer CIFAR-10 cats made on another model.

samples.json records the weights they were made on; `read_samples` returns nothing for a bundle whose weights have
changed since (retrained: the attacked images no longer fool it), so stale samples are never shown.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .bundle import WEIGHTS, file_sha256

SAMPLES, MANIFEST = "samples", "samples.json"
Tensor8 = torch.Tensor  # uint8 (3, S, S)


def write_samples(bundle: Path, clean: list[tuple[Tensor8, str]], attacked: list[tuple[Tensor8, str, str]]) -> Path:
    """Write BUNDLE/samples/: `clean` (image, class) and `attacked` (image, true class, class the bundle predicts),
    images uint8 (3, S, S). Replaces what was there; returns the folder."""
    out = bundle / SAMPLES
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    items = []
    for img, c in clean:
        items.append({**_save(out, img, f"clean-{_slug(c)}"), "kind": "clean", "caption": f"clean {c}", "label": c})
    for img, c, f in attacked:
        name = _save(out, img, f"attacked-{_slug(c)}-as-{_slug(f)}")
        items.append({**name, "kind": "attacked", "caption": f"{c}, attacked", "label": c, "predicted": f})
    manifest = {"model_weights_sha256": file_sha256(bundle / WEIGHTS), "samples": items}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def read_samples(bundle: Path, weights_sha256: str | None = None) -> list[dict[str, Any]]:
    """The bundle's samples ({file, kind, caption, label[, predicted]}), or [] when it has none or they were made on
    other weights. `weights_sha256`: the weights' hash when the caller knows it (a loaded detector), else computed."""
    path = bundle / SAMPLES / MANIFEST
    if not path.is_file():
        return []
    manifest = json.loads(path.read_text())
    if manifest.get("model_weights_sha256") != (weights_sha256 or file_sha256(bundle / WEIGHTS)):
        return []
    return [s for s in manifest.get("samples", []) if (bundle / SAMPLES / s["file"]).is_file()]


def _slug(name: str) -> str:
    """A class name as a file-name part: letters, digits, '-' and '_' kept, anything else '_'."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _save(out: Path, img: Tensor8, stem: str) -> dict[str, str]:
    name, i = f"{stem}.png", 1
    while (out / name).exists():  # two attacked images of the same classes
        i += 1
        name = f"{stem}-{i}.png"
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(out / name)
    return {"file": name}


__all__ = ["SAMPLES", "read_samples", "write_samples"]
