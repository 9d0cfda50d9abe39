"""Per-path cost accounting for any GatedNetwork, from its costs() (protocol.Cost): MACs per image, the dense
network's MACs, the gates' own MACs, and the parameters left once silent filters are removed.

MACs of a layer = active inputs * active outputs * kernel area / groups * output area. A gated unit's active outputs
are its open filters; a layer that reads a unit's masked output (through ReLU / pooling only) sees only that unit's
open filters as inputs. Everything else counts in full. Gate MACs are reported separately, so the DND FLOPs ratio
stays comparable to the paper's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .protocol import GatedNetwork


def dense_macs(model: GatedNetwork) -> int:
    """MACs of the same network with every filter open (gates not counted)."""
    return sum(c.in_ch * c.out_ch * c.kernel_area * c.out_area // c.groups for c in model.costs())


def gate_macs(model: GatedNetwork) -> int:
    """MACs of the gates themselves (two FCs each; the pooling counted as one add per input element)."""
    units, total = model.units(), 0
    for c in model.costs():
        gate = units[c.unit].gate if c.unit is not None else None
        if gate is not None:
            total += c.in_ch * c.in_area + sum(fc.in_features * fc.out_features for fc in (gate.fc1, gate.fc2))
    return total


def macs_per_sample(model: GatedNetwork, z: list[Tensor]) -> Tensor:
    """Conv + FC MACs for each sample, (N,) float64 on z's device, from the per-unit open-filter masks z
    (L x (N, C_l)). Stays on that device: in a GPU training step a host copy per layer would stall the launch queue.
    Exact: every term is an integer below 2**53."""
    units = model.units()
    if len(z) != len(units):
        raise ValueError(f"expected {len(units)} path layers, found {len(z)}")
    open_ = [zl.double().sum(1) for zl in z]
    total = torch.zeros(z[0].shape[0], dtype=torch.float64, device=z[0].device)
    for c in model.costs():
        n_out = open_[c.unit] if c.unit is not None else c.out_ch
        n_in = open_[c.source] if c.source is not None else c.in_ch
        total += n_in * n_out * (c.kernel_area * c.out_area / c.groups)
    return total


def pruned_parameters(model: GatedNetwork, z: list[Tensor]) -> int:
    """Parameter count after physically removing silent filters (z: L x (N, C_l) bool): their kernels, BN affine and
    gate row, and in every layer that reads them, their input kernels and that layer's gate inputs (LayerNorm affine
    and the first FC's column)."""
    units, costs = model.units(), model.costs()
    total = sum(p.numel() for p in model.parameters())
    for i, (u, zl) in enumerate(zip(units, z)):
        own = next(c for c in costs if c.unit == i)
        removed = own.in_ch // own.groups * own.kernel_area + 2 + (u.gate.fc2.in_features + 1 if u.gate else 0)
        for c in costs:
            if c.source == i:
                reader = units[c.unit].gate if c.unit is not None else None
                removed += c.out_ch // c.groups * c.kernel_area + (2 + reader.fc1.out_features if reader else 0)
        total -= int((~zl.any(0)).sum()) * removed
    return total
