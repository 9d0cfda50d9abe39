"""Per-class reference paths: how often each filter of each gated layer fires for clean images of a class.

Built from correctly classified *training* images. The signature of a class is the binary path of the filters
that fire for at least half of its images. Stored in the bundle as one safetensors file whose metadata holds the
JSON description (model weights hash, data fingerprint, images per class, creation time), so one rename replaces
the profiles atomically: a crash mid-way leaves the previous profiles intact. Beside the firing frequencies, each
class's mean gate logit per filter (z = 1(s > 0) keeps only the sign of s; the scorer also reads how far s sits from
where it sits for the class).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from .bundle import WEIGHTS, file_sha256, publish
from .consistency import FeatureSpec
from .features import feature_count
from .networks import GatedNetwork
from .scorer import PathScorer
from .stats import collect_gate_paths

PROFILES = "profiles.safetensors"
_META_KEY = "dnd_profiles"


@dataclass(frozen=True)
class PathProfiles:
    freq: list[Tensor]  # L x (K, C_l) float32: share of the class's images for which each filter is open
    counts: Tensor  # (K,) int64: images per class the profile was built from
    meta: dict[str, Any] = field(default_factory=dict)  # + "threshold", "calibration" once calibrated
    scorer: PathScorer | None = None  # the `path` score, fitted on a calibration split (see calibration.py)
    # L x (K, C_l) float32: the class's mean gate logit s per filter; None in profiles built without them (their
    # scorer reads z only) or built with gate_logits=False
    gate_mean: list[Tensor] | None = None

    @property
    def spec(self) -> FeatureSpec:
        """Which feature families beside the path features the scorer reads (meta "features"; none in profiles
        written before the families existed)."""
        return FeatureSpec.from_dict(self.meta.get("features"))

    def signatures(self, level: float = 0.5) -> list[Tensor]:
        """Binary reference path per class: L x (K, C_l) bool, filters open for >= `level` of the class."""
        return [f >= level for f in self.freq]


def build_profiles(
    model: GatedNetwork,
    x: Tensor,
    y: Tensor,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    gate_logits: bool = True,
) -> PathProfiles:
    """Profiles from images x (N, 3, S, S) (uint8 or [0,1] float) with labels y (N,); only the correctly
    classified ones count, so a profile describes how the model *succeeds* on a class. gate_logits=False leaves out
    the class means of the gate logits (the scorer then reads z only)."""
    if not model.cfg.decoupled:
        raise ValueError("path profiles need a decoupled model (one with gates); this bundle is dense")
    logits, z, s = collect_gate_paths(model, x, batch_size, device)
    ok = logits.argmax(1) == y
    k = model.cfg.num_classes
    counts = torch.stack([(ok & (y == c)).sum() for c in range(k)])
    if (counts == 0).any():
        missing = [model.cfg.classes[c] for c in range(k) if counts[c] == 0]
        raise ValueError(f"no correctly classified images of class(es) {missing}; expected at least one per class")
    freq = [torch.stack([zl[ok & (y == c)].float().mean(0) for c in range(k)]) for zl in z]
    gate_mean = [torch.stack([sl[ok & (y == c)].mean(0) for c in range(k)]) for sl in s] if gate_logits else None
    return PathProfiles(
        freq, counts.long(), {"images_correct": int(ok.sum()), "images_seen": len(y)}, gate_mean=gate_mean
    )


def save_profiles(profiles: PathProfiles, bundle: str | os.PathLike, data_fingerprint: str) -> Path:
    """Write BUNDLE/profiles.safetensors for the weights currently in BUNDLE (write to a temp file, then rename).
    Profiles, the fitted scorer and the threshold live in this one file, so one rename swaps them together."""
    bundle = Path(bundle)
    meta = {
        **profiles.meta,
        "model_weights_sha256": file_sha256(bundle / WEIGHTS),
        "data_fingerprint": data_fingerprint,
        "images_per_class": profiles.counts.tolist(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "layers": len(profiles.freq),
    }
    tensors = {f"freq.{l}": f.contiguous() for l, f in enumerate(profiles.freq)} | {"counts": profiles.counts}
    if profiles.gate_mean is not None:
        tensors |= {f"gate_mean.{l}": g.contiguous() for l, g in enumerate(profiles.gate_mean)}
    if profiles.scorer is not None:
        tensors |= {k: v.contiguous() for k, v in profiles.scorer.tensors().items()}
    tmp = bundle / f".{PROFILES}.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    publish(tmp, bundle / PROFILES)
    return bundle / PROFILES


def load_profiles(bundle: str | os.PathLike) -> PathProfiles:
    """Load BUNDLE/profiles.safetensors; refuses profiles built for other weights than BUNDLE's model."""
    bundle = Path(bundle)
    path = bundle / PROFILES
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build it with `dnd profiles --model {bundle} --data ROOT`")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(_META_KEY, "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    weights = file_sha256(bundle / WEIGHTS)
    if meta.get("model_weights_sha256") != weights:
        raise ValueError(
            f"{path} was built for model weights {str(meta.get('model_weights_sha256'))[:12]}..., but "
            f"{bundle / WEIGHTS} is {weights[:12]}...; rebuild with `dnd profiles --model {bundle}`"
        )
    n = meta["layers"]
    expected = {f"freq.{l}" for l in range(n)} | {"counts"}
    with_gates = expected | {f"gate_mean.{l}" for l in range(n)}
    scorer_keys = {k for k in tensors if k.startswith("scorer.")}
    if set(tensors) - scorer_keys not in (expected, with_gates):
        raise ValueError(
            f"{path}: expected tensors freq.0..freq.{n - 1}, counts and optionally gate_mean.0.."
            f"gate_mean.{n - 1}, found {sorted(tensors)}"
        )
    scorer = PathScorer.from_tensors(tensors) if scorer_keys else None
    freq = [tensors[f"freq.{l}"] for l in range(n)]
    gate_mean = [tensors[f"gate_mean.{l}"] for l in range(n)] if "gate_mean.0" in tensors else None
    if gate_mean is not None and [g.shape for g in gate_mean] != [f.shape for f in freq]:
        raise ValueError(
            f"{path}: gate_mean shapes {[tuple(g.shape) for g in gate_mean]} differ from freq shapes "
            f"{[tuple(f.shape) for f in freq]}"
        )
    want = feature_count([f.shape[1] for f in freq], gate_logits=gate_mean is not None)
    want += FeatureSpec.from_dict(meta.get("features")).extra_columns(n)
    if scorer is not None and scorer.mean.numel() != want:
        raise ValueError(
            f"{path}: its scorer was fitted on {scorer.mean.numel()} features, this version computes "
            f"{want} (an older feature set); rebuild with `dnd profiles --model {bundle} --data ROOT`"
        )
    return PathProfiles(freq, tensors["counts"], meta, scorer, gate_mean)
