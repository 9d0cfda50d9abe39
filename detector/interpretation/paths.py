"""The numbers behind the interpretation figures (Li et al., "Interpretable Neural Network Decoupling"), computed
from a bundle and test images; each function returns plain data that figures.py draws and writes as JSON / CSV.

Layers are the gated convs in forward order (18 for ResNet-20, 54 for ResNet-56, 14 for VGG-19). The figures show
"the first conv of each block": a ResNet's basic block holds two, so layers 0, 2, 4, ...; in a plain chain (VGG) every
gated conv is its own block. A filter is activated (open for every image), silent (never open) or dynamic (the rest),
over the images given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..networks import Cost


def _units(costs: list[Cost]) -> list[Cost]:
    return sorted((c for c in costs if c.unit is not None), key=lambda c: c.unit)


def first_convs(costs: list[Cost]) -> list[int]:
    """The first gated conv of each block: the units that read no other unit's output (a ResNet block's first conv
    reads the residual stream). In a plain chain only the first unit does, and every unit is shown."""
    units = _units(costs)
    firsts = [c.unit for c in units if c.source is None]
    return firsts if len(firsts) > 1 else [c.unit for c in units]


def stage_starts(costs: list[Cost]) -> list[int]:
    """The first gated conv at each spatial resolution (ResNet-20: layers 0, 6, 12)."""
    units = _units(costs)
    return [c.unit for i, c in enumerate(units) if i == 0 or c.out_area != units[i - 1].out_area]


def filter_states(z: list[Tensor]) -> list[Tensor]:
    """Per layer (C_l,) int: 0 silent, 1 dynamic, 2 activated, over the images of z (L x (N, C_l) bool)."""
    return [torch.where(zl.all(0), 2, torch.where(zl.any(0), 1, 0)) for zl in z]


def class_paths(z: list[Tensor], labels: Tensor, classes: list[str], shown: list[int]) -> dict[str, Any]:
    """Per class, the firing frequency of every dynamic filter in the layers `shown` (first_convs: the first conv of
    each block; paper Figs. 4, 9), and each class's mean path density over all layers (which classes take thin or thick
    paths)."""
    states = filter_states(z)
    k = len(classes)
    layers = []
    for l in shown:
        dyn = torch.nonzero(states[l] == 1).flatten()
        freq = torch.stack([z[l][labels == c][:, dyn].float().mean(0) for c in range(k)])  # (K, D_l)
        layers.append({"layer": l, "filters": dyn.tolist(), "freq": freq.tolist()})
    density = torch.stack([torch.cat([zl[labels == c].float() for zl in z], 1).mean() for c in range(k)])
    order = density.argsort()
    return {
        "classes": classes,
        "layers": layers,
        "density": {c: round(float(d), 4) for c, d in zip(classes, density)},
        "thinnest": classes[int(order[0])],
        "thickest": classes[int(order[-1])],
    }


def mean_path(z: list[Tensor], mask: Tensor) -> list[Tensor]:
    """Per layer the firing frequency (C_l,) over the images where mask (N,) holds."""
    return [zl[mask].float().mean(0) for zl in z]


def parting_layer(adv: list[Tensor], source: list[Tensor], target: list[Tensor]) -> dict[str, Any]:
    """Distance (mean |difference| of firing frequencies) of an adversarial group's path to the clean source-class
    path and to the clean target-class path, per layer; the first layer from which the group stays closer to the
    target than to the source ("where they part", paper Figs. 10, 11)."""
    d_src = [float((a - s).abs().mean()) for a, s in zip(adv, source)]
    d_tgt = [float((a - t).abs().mean()) for a, t in zip(adv, target)]
    closer = [t < s for s, t in zip(d_src, d_tgt)]
    part = next((l for l in range(len(closer)) if all(closer[l:])), None)
    return {"to_source": [round(v, 4) for v in d_src], "to_target": [round(v, 4) for v in d_tgt], "parting_layer": part}


def linear_heads(z: list[Tensor], labels: Tensor, k: int) -> list[Tensor]:
    """Per layer (K, C_l) weights of a linear classifier from the path z_l to the class: what the training's
    mutual-information heads learn (L_mi is that classifier's cross-entropy; bundles do not keep the heads, so they
    are refitted here, multinomial logistic regression, on the given paths) — the filter-class relation of Fig. 7."""
    from sklearn.linear_model import LogisticRegression

    out = []
    for zl in z:
        lr = LogisticRegression(C=1.0, max_iter=2000).fit(zl.float().numpy(), labels.numpy())
        out.append(torch.from_numpy(lr.coef_).float() if lr.coef_.shape[0] == k else torch.zeros(k, zl.shape[1]))
    return out


def filter_extremes(
    s: list[Tensor], z: list[Tensor], stages: list[int], per_stage: int = 2, n: int = 8
) -> list[dict[str, Any]]:
    """For the `per_stage` most variable dynamic filters of each stage's first conv (`stages`: stage_starts), the
    indices of the n images with the highest and the lowest gate logit: what opens and what shuts the
    filter (Fig. 6)."""
    states = filter_states(z)
    picks = []
    for l in stages:
        dyn = torch.nonzero(states[l] == 1).flatten()
        if not len(dyn):
            continue
        var = s[l][:, dyn].var(0)
        for j in dyn[var.argsort(descending=True)[:per_stage]].tolist():
            order = s[l][:, j].argsort(descending=True)
            picks.append(
                {
                    "layer": l,
                    "filter": j,
                    "open_share": round(float(z[l][:, j].float().mean()), 4),
                    "most_open": order[:n].tolist(),
                    "most_shut": order[-n:].flip(0).tolist(),
                    "logits_open": [round(float(v), 3) for v in s[l][order[:n], j]],
                    "logits_shut": [round(float(v), 3) for v in s[l][order[-n:].flip(0), j]],
                }
            )
    return picks
