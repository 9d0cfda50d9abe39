"""Per-epoch training checkpoints: tensors in safetensors, everything else in JSON (nothing pickled)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from detector.bundle import write_json

STATE, META = "state.safetensors", "state.json"


def _optim_tensors(optimizers: list[torch.optim.Optimizer]) -> dict[str, torch.Tensor]:
    """Every tensor of every optimizer's per-parameter state (momentum, Adam moments and step)."""
    out = {}
    for j, opt in enumerate(optimizers):
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            for key, v in opt.state.get(p, {}).items():
                out[f"optim{j}.{i}.{key}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return out


def save_checkpoint(
    ckpt_dir: Path, modules: dict[str, torch.nn.Module], optimizers: list[torch.optim.Optimizer], meta: dict[str, Any]
) -> None:
    """Write modules' state, optimizer state and meta. The JSON is written last and names the tensors file,
    so a crash between the two writes leaves the previous, consistent checkpoint in place."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{name}.{k}": v.detach().cpu().contiguous() for name, m in modules.items() for k, v in m.state_dict().items()
    }
    tensors.update(_optim_tensors(optimizers))
    epoch = meta["epoch"]
    name = f"state-{epoch:04d}.safetensors"
    tmp = ckpt_dir / f".{name}.tmp{os.getpid()}"
    save_file(tensors, str(tmp))
    os.replace(tmp, ckpt_dir / name)
    write_json(ckpt_dir / META, {**meta, "tensors": name})
    for old in ckpt_dir.glob("state-*.safetensors"):  # keep only the one the JSON points at
        if old.name != name:
            old.unlink()


def load_checkpoint(
    ckpt_dir: Path, modules: dict[str, torch.nn.Module], optimizers: list[torch.optim.Optimizer], device: torch.device
) -> dict[str, Any]:
    meta = json.loads((ckpt_dir / META).read_text())
    tensors = load_file(str(ckpt_dir / meta["tensors"]))
    for name, m in modules.items():
        prefix = f"{name}."
        m.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
    for j, opt in enumerate(optimizers):
        params = [p for g in opt.param_groups for p in g["params"]]
        for key, v in tensors.items():
            if key.startswith(f"optim{j}."):
                _, i, name = key.split(".", 2)
                # Adam keeps `step` on the CPU; moments and momentum live with the parameter
                opt.state[params[int(i)]][name] = v if name == "step" else v.to(device)
    return meta
