"""One optimisation step: optimizers, learning-rate schedule, the forward pass with every loss term, the update."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from detector.losses import DecouplingLoss
from detector.networks import GatedNetwork, PathOutput
from detector.networks.macs import macs_per_sample

from .adversarial import perturb
from .config import TrainConfig
from .distill import distill_loss, teacher_forward

Teacher = GatedNetwork | torch.Tensor | None  # a network run on the batch, or its precomputed logits (B, K)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak` over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def make_optimizers(model: GatedNetwork, loss: DecouplingLoss | None, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """SGD for the network (weight decay on conv/FC weights only); Adam for gates and MI heads, if any. Each param
    group carries its peak LR ("peak"); the schedule scales it every step."""
    decay, no_decay, gates = [], [], []
    for name, p in model.named_parameters():
        (gates if ".gate." in name else decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "peak": cfg.lr},
        {"params": no_decay, "weight_decay": 0.0, "peak": cfg.lr},
    ]
    sgd = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, foreach=True)
    if loss is None:
        return [sgd]
    adam_groups = [{"params": gates + list(loss.parameters()), "peak": cfg.gate_lr}]
    return [sgd, torch.optim.Adam(adam_groups, lr=cfg.gate_lr, foreach=True)]


def set_lr(optimizers: list[torch.optim.Optimizer], frac: float) -> None:
    """Every param group's LR to `frac` of its peak."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = frac * g["peak"]


def float_paths(res: PathOutput) -> PathOutput:
    """A forward pass's outputs cast to float32 (autograd flows through the casts)."""

    def f(ts: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        return None if ts is None else [t.float() for t in ts]

    return PathOutput(res.logits.float(), res.features.float(), f(res.z), f(res.s), f(res.energy))


def step_loss(
    model: GatedNetwork,
    loss_mod: DecouplingLoss | None,
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    lambda_s: float | torch.Tensor,
    dense: int,
    teacher: Teacher = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward pass and every loss term of one step: (total loss, detached terms for the log). This is the part
    `--compile` hands to torch.compile; backward and the optimizer steps stay in train_step."""
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        res = model.forward_paths(xb, energy=loss_mod is not None)
    if cfg.bf16:  # the losses in float32: bf16's 8 mantissa bits would round the small MI / KL / L1 terms
        res = float_paths(res)
    ce = F.cross_entropy(res.logits, yb)
    terms = {"ce": ce.detach()}
    loss = ce
    if teacher is not None:
        if torch.is_tensor(teacher):
            t_logits = teacher
        else:
            with torch.no_grad():
                t_logits = teacher_forward(teacher, xb, cfg.kd_teacher_bf16)
        kd = distill_loss(res.logits, t_logits, cfg.kd_temperature)
        loss = loss + cfg.lambda_kd * kd
        terms["kd"] = kd.detach()
    if loss_mod is not None:
        d = loss_mod(res, yb)
        lam_s = lambda_s.to(d["l1"].dtype) if torch.is_tensor(lambda_s) else lambda_s
        loss = loss + cfg.lambda_m * d["mi"] + cfg.lambda_k * d["kl"] + lam_s * d["l1"]
        with torch.no_grad():  # the cost the model would have at eval time (z = 1(s > 0))
            flops = macs_per_sample(model, [s > 0 for s in res.s]).mean() / dense
        terms.update({k: v.detach() for k, v in d.items()}, flops=flops)
    terms["acc"] = (res.logits.argmax(1) == yb).float().mean()
    return loss, terms


def compiled_step_loss() -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """step_loss through torch.compile (inductor; on CPU it needs a C++ compiler). It fuses the gates' many small
    element-wise ops and the masks into few kernels (bench/train_epoch.py --compile). Gate noise then comes from
    inductor's own seeded generator: the same noise law, other draws than eager."""
    return torch.compile(step_loss)


def train_step(
    model: GatedNetwork,
    loss_mod: DecouplingLoss | None,
    optimizers: list[torch.optim.Optimizer],
    xb: torch.Tensor,
    yb: torch.Tensor,
    cfg: TrainConfig,
    lambda_s: float | torch.Tensor,
    dense: int,
    teacher: Teacher = None,
    loss_fn: Callable[..., Any] = step_loss,
) -> dict[str, torch.Tensor]:
    """One optimisation step; returns the detached loss terms (and, decoupled, the eval-time FLOPs ratio). With
    adversarial training (cfg.adv_eps > 0) the batch is first replaced by its perturbation (training.adversarial), and
    every term, distillation included, is computed on it."""
    if cfg.adv_eps > 0:
        xb = perturb(model, xb, yb, cfg.adv_eps, cfg.adv_steps, cfg.adv_alpha, cfg.bf16)
    loss, terms = loss_fn(model, loss_mod, xb, yb, cfg, lambda_s, dense, teacher)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in optimizers:
        opt.step()
    return terms
