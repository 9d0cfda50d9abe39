"""Self-describing model bundle: DIR/model.safetensors + DIR/config.json (+ DIR/metrics.json).

Weights load with strict keys through safetensors; nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .networks import GatedNetwork, build_model
from .runtime import check_device

WEIGHTS, CONFIG, METRICS = "model.safetensors", "config.json", "metrics.json"


def library_versions() -> dict[str, str]:
    import numpy
    import safetensors

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
    }


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished temp file into place (atomic), readable as a normal file would be: safetensors writes 0600."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, final)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temp file + rename), so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def state_to_safetensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def save_bundle(
    model: GatedNetwork, out_dir: str | os.PathLike, extra: dict[str, Any], weights_dtype: str = "float32"
) -> Path:
    """Write weights and config.json. `extra` (training hyper-parameters, seed, data fingerprint...) is stored as is.

    `weights_dtype` "float16" stores the conv and linear weights (every float tensor of 2 or more dimensions) in half
    precision: half the file, for networks whose float32 weights pass GitHub's 50 MB file warning (VGG-19: 80 MB).
    They load back into float32 parameters (load_state_dict casts); biases and batch-norm statistics stay float32.
    config.json records it, and `dnd stats` then measures the rounded weights."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if weights_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weights dtype: expected one of {', '.join(WEIGHT_DTYPES)}, got {weights_dtype!r}")
    half = WEIGHT_DTYPES[weights_dtype]
    tensors = {
        k: v.to(half) if v.is_floating_point() and v.dim() >= 2 else v for k, v in state_to_safetensors(model).items()
    }
    tmp = out / f".{WEIGHTS}.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    publish(tmp, out / WEIGHTS)
    config = {
        "model": model.cfg.to_dict(),
        "weights_sha256": file_sha256(out / WEIGHTS),
        "weights_dtype": weights_dtype,
        "libraries": library_versions(),
        **extra,
    }
    write_json(out / CONFIG, config)
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path) / CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: a model bundle is a directory with {WEIGHTS} and {CONFIG}")
    return json.loads(p.read_text())


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> GatedNetwork:
    """Load a bundle's model in eval mode, its conv weights in channels_last (NHWC) layout. Keys must match the
    architecture in config.json exactly.

    channels_last is the layout the network trains in, and the one oneDNN's CPU convolutions run fastest in, whatever
    the input's layout. Logits move by ~1e-6 against NCHW (float summation order)."""
    path = Path(path)
    device = check_device(device)  # a clear error before any file is read, for the CLI, the service and the API
    cfg = ModelConfig.from_dict(read_config(path)["model"])
    weights = path / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found: a model bundle is a directory with {WEIGHTS} and {CONFIG}")
    model = build_model(cfg)
    state = load_file(str(weights))
    expected, found = set(model.state_dict()), set(state)
    if expected != found:
        raise ValueError(
            f"{weights} does not match config.json's architecture: missing keys "
            f"{sorted(expected - found)[:5]}, unexpected keys {sorted(found - expected)[:5]}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device, memory_format=torch.channels_last).eval()


def read_json_or_none(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def training_summary(config: dict[str, Any]) -> dict[str, Any]:
    """How the served network was trained, from its config.json, and the trade-off that makes: an adversarially
    trained network gives up clean accuracy for accuracy under attack, which the detector alone cannot give."""
    t = config.get("train", {})
    adv = float(t.get("adv_eps", 0) or 0) > 0
    return {
        "phase": config.get("phase"),
        "init": (config.get("init") or {}).get("path"),
        "adversarial": {"eps": t["adv_eps"], "steps": t.get("adv_steps"), "alpha": t.get("adv_alpha")} if adv else None,
        "trade_off": (
            f"adversarially trained (Linf {t['adv_eps']:g}/255): lower clean accuracy, keeps part of its accuracy "
            "against attackers who know the model and the detector"
            if adv
            else "standard training: the highest clean accuracy; the detector flags attacks made without knowledge "
            "of it, and an attacker who knows it evades it"
        ),
    }
