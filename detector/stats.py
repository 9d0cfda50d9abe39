"""Cost and filter statistics of a (decoupled) model: MACs per image, filter states, pruned parameters.

MACs of a 3x3 conv = active_in * active_out * 9 * H_out * W_out. A gated conv's active outputs are its open
filters; the second conv of a block also sees only the first conv's open filters as input. The first block
conv reads the residual stream, which is always dense. The stem conv and the FC are always counted in full.
Gate MACs (GAP + two small FCs) are reported separately, so the DND FLOPs ratio stays comparable to the paper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .data import to_unit_float
from .model import INPUT_HW, CifarResNet


def _fixed_macs(model: CifarResNet) -> int:
    stem = model.stem[0]
    return stem.in_channels * stem.out_channels * 9 * INPUT_HW * INPUT_HW + model.fc.in_features * model.fc.out_features


def dense_macs(model: CifarResNet) -> int:
    """MACs of the same network with every filter open (gates not counted)."""
    return _fixed_macs(model) + sum(u.cin * u.cout * 9 * u.out_hw**2 for u in model.units())


def gate_macs(model: CifarResNet) -> int:
    """MACs of the gates themselves (FCs; pooling counted as one add per input element)."""
    total = 0
    for u in model.units():
        if u.gate is not None:
            hw_in = (u.out_hw * u.conv.stride[0]) ** 2
            total += (
                u.cin * hw_in
                + u.gate.fc1.in_features * u.gate.fc1.out_features
                + u.gate.fc2.in_features * u.gate.fc2.out_features
            )
    return total


def macs_per_sample(model: CifarResNet, z: list[Tensor]) -> Tensor:
    """Conv + FC MACs for each sample, (N,) float64 on z's device, from the per-layer open-filter masks z
    (L x (N, C_l)).
    Stays on that device: in a GPU training step a host copy per layer would stall the launch queue 18 times."""
    units = model.units()
    if len(z) != len(units):
        raise ValueError(f"expected {len(units)} path layers, found {len(z)}")
    total = torch.full((z[0].shape[0],), float(_fixed_macs(model)), dtype=torch.float64, device=z[0].device)
    for i in range(0, len(units), 2):  # (unit1, unit2) of each block
        u1, u2 = units[i], units[i + 1]
        n1, n2 = z[i].double().sum(1), z[i + 1].double().sum(1)
        total += u1.cin * n1 * 9 * u1.out_hw**2 + n1 * n2 * 9 * u2.out_hw**2
    return total


@torch.inference_mode()
def collect_gate_paths(
    model: CifarResNet, x: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Eval-mode logits (N, K), binary paths L x (N, C_l) (bool) and gate logits L x (N, C_l) (float32; z = 1(s > 0))
    for uint8 or [0,1] float images x."""
    model.eval()
    logits, paths, gates = [], [], []
    for i in range(0, max(len(x), 1), batch_size):  # one empty batch for empty x: (0, K) logits, (0, C_l) paths
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
    model: CifarResNet, x: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
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


def pruned_parameters(model: CifarResNet, z: list[Tensor]) -> int:
    """Parameter count after physically removing silent filters: their conv kernels, BN affine and gate row; for a
    block's first conv also the second conv's input kernels and its gate's LayerNorm/FC inputs that read them."""
    total = sum(p.numel() for p in model.parameters())
    units = model.units()
    for i, (u, zl) in enumerate(zip(units, z)):
        silent = int((~zl.any(0)).sum())
        removed = u.cin * 9 + 2 + (u.gate.fc2.in_features + 1 if u.gate is not None else 0)
        if i % 2 == 0:  # a block's first conv feeds only the second conv (and that conv's gate)
            nxt = units[i + 1]
            removed += nxt.cout * 9 + (2 + nxt.gate.fc1.out_features if nxt.gate is not None else 0)
        total -= silent * removed
    return total


def compute_stats(
    model: CifarResNet, x: Tensor, y: Tensor, batch_size: int = 500, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Everything `dnd stats` reports, on images x (N,3,32,32) uint8 or float and labels y (N,)."""
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
