"""Splitting the attack batches of `dnd profiles` and `dnd evaluate` across the processes torchrun starts.

`shard_map(fn, n)` runs fn(i) for the batches i of this process (i % world == rank) and returns every batch's result,
in order, on every process. Each batch seeds its own randomness (the callers do), so the results are those of one
process whatever the number of processes. Without an initialised process group it is a plain loop; the library
never starts one (the `dnd` command line does, under torchrun).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")


def world() -> tuple[int, int]:
    """(rank, number of processes); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Whether this process writes the outputs (process 0, or the only one)."""
    return world()[0] == 0


def shard_map(fn: Callable[[int], T], n: int) -> list[T]:
    rank, size = world()
    if size == 1:
        return [fn(i) for i in range(n)]
    mine = {i: fn(i) for i in range(rank, n, size)}
    gathered: list[dict[int, T] | None] = [None] * size
    dist.all_gather_object(gathered, mine)  # in-process communication of tensors, not storage
    merged = {i: v for part in gathered for i, v in (part or {}).items()}
    return [merged[i] for i in range(n)]
