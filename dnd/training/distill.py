"""Knowledge distillation from the --init bundle (Hinton et al. 2015): the frozen teacher, its logits, the loss."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detector.networks import CifarResNet, GatedNet, GatedNetwork


def frozen_teacher(src: GatedNetwork, device: torch.device) -> GatedNetwork:
    """The distillation teacher: `src` in eval mode, frozen, channels_last, with every BatchNorm that directly follows
    a conv folded into it (W' = W * g / sqrt(v + eps), b' = beta - mu * g / sqrt(v + eps)), which eval-mode BN allows.
    The logits are the same up to float rounding (a test checks), and the teacher's forward skips those BatchNorms.
    Modifies `src`; its class and forward stay (a folded BatchNorm becomes nn.Identity)."""
    src = src.eval().requires_grad_(False)
    if isinstance(src, CifarResNet):
        src.stem[0], src.stem[1] = fuse_conv_bn_eval(src.stem[0], src.stem[1]), nn.Identity()
        for u in src.units():
            u.conv, u.bn = fuse_conv_bn_eval(u.conv, u.bn), nn.Identity()
    else:  # a decouple()d network's rewritten graph is fx already; it calls its gates in Python control flow
        fold_batchnorms(src.net if isinstance(src, GatedNet) else src)
    return src.to(device, memory_format=torch.channels_last).requires_grad_(False)


def fold_batchnorms(model: nn.Module) -> int:
    """Fold each eval-mode BatchNorm2d whose input is a Conv2d's output and nothing else's into that conv, in place;
    the number folded. Where they sit comes from the module's torch.fx graph; a module fx cannot trace, or a conv or
    BatchNorm called more than once, is left as it is (same logits, just slower)."""
    try:
        graph = model.graph if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model).graph
    except Exception:  # fx raises many types for untraceable Python; unfolded is still correct
        return 0
    mods = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    folded = 0
    for node in graph.nodes:
        bn = mods.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.training or not node.args:
            continue
        prev = node.args[0]
        conv = mods.get(prev.target) if isinstance(prev, fx.Node) and prev.op == "call_module" else None
        if (
            type(conv) is nn.Conv2d
            and len(prev.users) == 1
            and calls[prev.target] == 1
            and calls[node.target] == 1
            and bn.track_running_stats
        ):
            model.set_submodule(prev.target, fuse_conv_bn_eval(conv, bn))
            model.set_submodule(node.target, nn.Identity())
            folded += 1
    return folded


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
