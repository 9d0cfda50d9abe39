"""Cost and filter statistics of a (decoupled) model on a set of images: accuracy, MACs per image (networks/macs.py),
filter states (activated / silent / dynamic), parameters once silent filters are removed."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from .data import to_unit_float
from .networks import GatedNetwork
from .networks.macs import dense_macs, gate_macs, macs_per_sample, pruned_parameters


@torch.inference_mode()
def collect_gate_paths(
    model: GatedNetwork, x: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Eval-mode logits (N, K), binary paths L x (N, C_l) (bool) and gate logits L x (N, C_l) (float32; z = 1(s > 0))
    for uint8 or [0,1] float images x."""
    model.eval()
    logits, paths, gates = [], [], []
    starts = range(0, max(len(x), 1), batch_size)  # one empty batch for empty x: (0, K) logits, (0, C_l) paths
    for i in tqdm(starts, desc="paths", unit="batch", leave=False, disable=len(starts) < 4):
        xb = x[i : i + batch_size].to(device)
        xb = to_unit_float(xb)
        out = model.forward_paths(xb.contiguous(memory_format=torch.channels_last))
        logits.append(out.logits.float().cpu())
        paths.append([z.bool().cpu() for z in out.z])
        gates.append([s.float().cpu() for s in out.s])
    layers = range(len(paths[0]))
    return (
        torch.cat(logits),
        [torch.cat([p[l] for p in paths]) for l in layers],
        [torch.cat([g[l] for g in gates]) for l in layers],
    )


def collect_paths(
    model: GatedNetwork, x: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> tuple[Tensor, list[Tensor]]:
    """Eval-mode logits (N, K) and binary paths L x (N, C_l) (bool) for uint8 or [0,1] float images x."""
    logits, z, _ = collect_gate_paths(model, x, batch_size, device)
    return logits, z


def filter_states(z: list[Tensor]) -> dict[str, int]:
    """activated: open for every sample; silent: never open; dynamic: the rest. z: L x (N, C_l) bool."""
    act = sum(int(zl.all(0).sum()) for zl in z)
    sil = sum(int((~zl.any(0)).sum()) for zl in z)
    tot = sum(zl.shape[1] for zl in z)
    return {"activated": act, "silent": sil, "dynamic": tot - act - sil, "total": tot}


def compute_stats(
    model: GatedNetwork, x: Tensor, y: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Everything `dnd stats` reports, on images x (N, 3, S, S) uint8 or float and labels y (N,)."""
    logits, z = collect_paths(model, x, batch_size, device)
    acc = float((logits.argmax(1) == y).float().mean())
    dense = dense_macs(model)
    out: dict[str, Any] = {
        "n_images": len(y),
        "test_accuracy": acc,
        "dense_macs": dense,
        "parameters": sum(p.numel() for p in model.parameters()),
        "decoupled": model.cfg.decoupled,
    }
    if not z:  # dense model: every filter of every (would-be gated) conv is open for every image
        n_filters = sum(u.cout for u in model.units())
        out.update(
            mean_macs=float(dense),
            flops_ratio=1.0,
            gate_macs=0,
            filter_states={"activated": n_filters, "silent": 0, "dynamic": 0, "total": n_filters},
            parameters_without_silent=out["parameters"],
            per_layer=[
                {"layer": i, "filters": u.cout, "density": 1.0, "activated": u.cout, "silent": 0, "dynamic": 0}
                for i, u in enumerate(model.units())
            ],
        )
        return out
    macs = macs_per_sample(model, z)
    out.update(
        mean_macs=float(macs.mean()),
        flops_ratio=float(macs.mean()) / dense,
        gate_macs=gate_macs(model),
        flops_ratio_with_gates=(float(macs.mean()) + gate_macs(model)) / dense,
        filter_states=filter_states(z),
        parameters_without_silent=pruned_parameters(model, z),
    )
    out["per_layer"] = [
        {
            "layer": i,
            "filters": zl.shape[1],
            "density": float(zl.float().mean()),
            **{k: v for k, v in filter_states([zl]).items() if k != "total"},
        }
        for i, zl in enumerate(z)
    ]
    return out
