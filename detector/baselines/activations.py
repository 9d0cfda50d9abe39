"""The network's intermediate activations for the layer-wise baselines: the outputs of model.stages() (a ResNet: the
stem and every residual block), recorded by forward hooks (the model itself is not changed)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..networks import GatedNetwork, spatial_mean


@torch.inference_mode()
def layer_activations(model: GatedNetwork, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits (N, K) and the activations of model.stages() (a ResNet: the stem and each block), L x (N, C, H, W), for
    images x in [0, 1]."""
    acts: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out)) for m in model.stages()]
    try:
        logits = model.eval()(x.contiguous(memory_format=torch.channels_last))
    finally:
        for h in hooks:
            h.remove()
    return logits, acts


def pooled_activations(model: GatedNetwork, x: Tensor, batch_size: int = 500) -> tuple[Tensor, list[Tensor]]:
    """Logits (N, K) and per layer the spatial mean of its activation, L x (N, C): the inputs of the Mahalanobis
    ensemble (Lee et al. pool each feature map the same way)."""
    logits, pooled = [], []
    for i in range(0, len(x), batch_size):
        lg, acts = layer_activations(model, x[i : i + batch_size])
        logits.append(lg.float())
        pooled.append([spatial_mean(a).float() for a in acts])
    return torch.cat(logits), [torch.cat(layer) for layer in zip(*pooled)]
