"""Data-parallel training under torchrun: `dnd train` started by `torchrun --nproc_per_node N -m dnd train ...` (or
across machines with torchrun's rendezvous flags) runs N processes, each on a slice of every global batch.

- Process group: gloo on the CPU, NCCL on GPUs; each process takes the GPU of its LOCAL_RANK.
- The network and the decoupling heads are wrapped in DistributedDataParallel (gradients averaged across processes),
  so the gates and MI heads keep their own optimiser as in one process.
- BatchNorm statistics are those of the whole global batch: torch's SyncBatchNorm on GPUs; on the CPU, where it is
  not supported ("SyncBatchNorm layers only work with GPU modules"), `GlobalBatchNorm2d` below all-reduces the
  per-channel sums with a differentiable all-reduce. State-dict keys are unchanged, so checkpoints and bundles are
  the same files as in one process.
- Every process draws the same data order and augmentation for the global batch and keeps its contiguous slice, so
  a run with gates off or on eval-time paths reaches the weights one process reaches at the same global batch (a
  test checks it); the per-element gate noise of the noisy phase differs (each process draws its own slice).
- Logged terms and the FLOPs ratio that steers lambda_s are averaged across processes; process 0 evaluates, writes
  checkpoints and the bundle, the others wait at a barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
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


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch across processes (CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_tensor([x.numel() / c])])
        tot = all_reduce(local)  # summed over processes; its backward sums the gradients back
        n = tot[-1]
        mean = tot[:c] / n
        var = (tot[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1), alpha=m)
                self.num_batches_tracked.add_(1)
        shape = (1, c, 1, 1)
        y = (xf - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of `model` computing global-batch statistics: torch's SyncBatchNorm on GPUs, GlobalBatchNorm2d
    on the CPU (the same parameters and buffers, moved over)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
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
