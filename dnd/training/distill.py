"""Knowledge distillation from the --init bundle (Hinton et al. 2015): the frozen teacher, its logits, the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detector.networks import CifarResNet, GatedNetwork


def frozen_teacher(src: GatedNetwork, device: torch.device) -> GatedNetwork:
    """The distillation teacher: `src` in eval mode, frozen, channels_last, with every BatchNorm folded into the conv
    before it (W' = W * g / sqrt(v + eps), b' = beta - mu * g / sqrt(v + eps)), which eval-mode BN allows. The logits
    are the same up to float rounding (a test checks), and the teacher's forward skips every BatchNorm. Modifies
    `src`. The folding needs to know where each BatchNorm sits: a CIFAR ResNet's are folded, other families run their
    BatchNorms (same logits)."""
    src = src.eval().requires_grad_(False)
    if isinstance(src, CifarResNet):
        src.stem[0], src.stem[1] = fuse_conv_bn_eval(src.stem[0], src.stem[1]), nn.Identity()
        for u in src.units():
            u.conv, u.bn = fuse_conv_bn_eval(u.conv, u.bn), nn.Identity()
    return src.to(device, memory_format=torch.channels_last).requires_grad_(False)


def teacher_forward(teacher: GatedNetwork, x: torch.Tensor, bf16: bool) -> torch.Tensor:
    """The teacher's logits (B, K), float32. bf16: the forward runs under bfloat16 autocast (faster where the CPU has
    native bf16; the soft targets move by float rounding only). Callers hold no_grad."""
    if not bf16:
        return teacher(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        return teacher(x).float()


@torch.no_grad()  # not inference_mode: the logits are a target inside the autograd graph of every step
def teacher_logits(teacher: GatedNetwork, x: torch.Tensor, bf16: bool = False, batch_size: int = 1000) -> torch.Tensor:
    """The teacher's logits for each image and for its mirror image, (2, N, K) on x's device: the targets of
    offline distillation (kd_offline), computed once per run instead of a teacher forward every step."""
    teacher.eval()
    plain, mirrored = [], []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        plain.append(teacher_forward(teacher, xb.contiguous(memory_format=torch.channels_last), bf16).float())
        mirrored.append(
            teacher_forward(teacher, xb.flip(3).contiguous(memory_format=torch.channels_last), bf16).float()
        )
    return torch.stack([torch.cat(plain), torch.cat(mirrored)])


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), mean over the batch; logits (B, K)."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), reduction="batchmean", log_target=True)
    return kl * t * t
