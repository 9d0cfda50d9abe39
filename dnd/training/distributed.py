"""Data-parallel training under torchrun: `dnd train` started by `torchrun --nproc_per_node N -m dnd train ...` (or
across machines with torchrun's rendezvous flags) runs N processes, each on a slice of every global batch.

- Process group: gloo on the CPU, NCCL on GPUs; each process takes the GPU of its LOCAL_RANK.
- The network and the decoupling heads are wrapped in DistributedDataParallel (gradients averaged across processes),
  so the gates and MI heads keep their own optimiser as in one process.
- BatchNorm statistics are those of the whole global batch: torch's SyncBatchNorm on GPUs; on the CPU, where it is
  not supported ("SyncBatchNorm layers only work with GPU modules"), `GlobalBatchNorm2d` below all-reduces the
  per-channel sums forward and the statistics' gradients backward around ATen's fused batch-norm kernels.
  State-dict keys are unchanged, so checkpoints and bundles are the same files as in one process.
- Every process draws the same data order and augmentation for the global batch and keeps its contiguous slice, so
  a run with gates off or on eval-time paths reaches the weights one process reaches at the same global batch (a
  test checks it); the per-element gate noise of the noisy phase differs (each process draws its own slice).
- Logged terms and the FLOPs ratio that steers lambda_s are averaged across processes; process 0 evaluates, writes
  checkpoints and the bundle, the others wait at a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def on(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.on:
            dist.barrier()

    def mean(self, t: Tensor) -> Tensor:
        """The average of t over the processes (t itself in one process)."""
        if not self.on:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t / self.world

    def shard(self, idx: Tensor) -> Tensor:
        """This process's contiguous slice of a global batch's indices."""
        return idx.chunk(self.world)[self.rank] if self.on else idx


def init(device: str) -> tuple[Dist, str]:
    """The process group from torchrun's environment (WORLD_SIZE > 1), and the device this process trains on."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    cuda = torch.device(device).type == "cuda"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if cuda:
        torch.cuda.set_device(d.local_rank)
        device = f"cuda:{d.local_rank}"
    return d, device


def _all_reduce_sum(t: Tensor) -> Tensor:
    dist.all_reduce(t)
    return t


def _all_gather(t: Tensor) -> Tensor:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return torch.stack(out)


class _GlobalBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of x (N, C, H, W) with the statistics of the global batch: one all-gather of each
    process's per-channel (mean, variance, count) forward, combined as Chan et al.'s parallel variance (no
    E[x^2] - E[x]^2 cancellation), and one all-reduce of (sum dy, sum dy * x_hat) backward, as torch's SyncBatchNorm
    does on GPUs. Normalisation and its backward run in ATen's fused batch-norm kernels (given the global mean and
    variance, in inference mode, the stat terms added here), so a step costs about what plain BatchNorm2d costs:
    the same formula written as element-wise tensor ops made 2-process training 2.2x slower than one process on the
    same cores. `gather` stacks a tensor over the processes, `reduce` sums it (t[None] and t in one process)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, gather, reduce):  # type: ignore[override]
        c = x.shape[1]
        # ATen's batch-norm statistics kernel (biased variance; torch.var_mean took 13x as long on channels_last),
        # in float32 under bf16 autocast; the normalisation below takes bf16 x with float32 statistics as it is
        xs = x if x.dtype == weight.dtype else x.to(weight.dtype)
        mean_l, var_l = torch.batch_norm_update_stats(xs, None, None, 0.0)
        del xs
        parts = gather(torch.cat([mean_l, var_l, mean_l.new_tensor([x.numel() / c])]))  # (processes, 2C + 1)
        counts = parts[:, -1:]
        n = counts.sum()
        mean = (parts[:, :c] * counts).sum(0) / n
        var = ((parts[:, c : 2 * c] + (parts[:, :c] - mean) ** 2) * counts).sum(0) / n
        ctx.save_for_backward(x, weight, mean, var)
        ctx.eps, ctx.reduce, ctx.n = eps, reduce, n
        ctx.mark_non_differentiable(mean, var, n)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps), mean, var, n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, *_):  # type: ignore[override]
        x, weight, mean, var = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                           else torch.contiguous_format)  # fmt: skip
        # inference-mode backward: dx0 = dy * w * invstd, and this process's sum(dy * x_hat) and sum(dy)
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, mean, var, None, None, False, ctx.eps, [True, True, True]
        )
        g = ctx.reduce(torch.cat([db, dw]))
        c = mean.numel()
        invstd = torch.rsqrt(var + ctx.eps)
        # dx = w * invstd * (dy - sum(dy) / n - x_hat * sum(dy * x_hat) / n), the sums over the global batch
        a = weight * invstd * invstd * g[c:] / ctx.n
        b = weight * invstd * g[:c] / ctx.n - a * mean
        dx = dx - torch.addcmul(b.view(1, -1, 1, 1).to(x.dtype), x, a.view(1, -1, 1, 1).to(x.dtype))
        return dx, dw, db, None, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch across processes (CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        return global_batch_norm(self, x, _all_gather, _all_reduce_sum)


def global_batch_norm(
    bn: nn.BatchNorm2d, x: Tensor, gather: Callable[[Tensor], Tensor], reduce: Callable[[Tensor], Tensor]
) -> Tensor:
    """bn's training-mode forward over the global batch (`gather` stacks over processes, `reduce` sums), its running
    statistics updated with the global mean and unbiased variance as BatchNorm2d updates them."""
    y, mean, var, n = _GlobalBatchNorm.apply(x, bn.weight, bn.bias, bn.eps, gather, reduce)
    if bn.track_running_stats:
        with torch.no_grad():
            m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked + 1)
            bn.running_mean.mul_(1 - m).add_(mean, alpha=m)
            bn.running_var.mul_(1 - m).add_(var * n / (n - 1), alpha=m)
            bn.num_batches_tracked.add_(1)
    return y


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of `model` computing global-batch statistics: torch's SyncBatchNorm on GPUs, GlobalBatchNorm2d
    on the CPU (the same parameters and buffers, moved over)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d and child.affine:  # (every BatchNorm of the network is affine)
            g = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            ).to(device)
            g.load_state_dict(child.state_dict())
            setattr(model, name, g)
        else:
            sync_batchnorm(child, device)
    return model


class StepModule(nn.Module):
    """What DistributedDataParallel wraps: the network and the decoupling heads; its forward is one step's loss."""

    def __init__(self, model: nn.Module, loss_mod: nn.Module | None, loss_fn: object) -> None:
        super().__init__()
        self.model, self.loss_mod, self.loss_fn = model, loss_mod, loss_fn

    def forward(self, *args: object) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss_fn(self.model, self.loss_mod, *args)
