"""`dnd` command line. Heavy imports happen inside each sub-command, so `dnd --help` is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .commands import attack, evaluate, figures, profiles, serve, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dnd", description="Dynamic Neural Network Decoupling: adversarial-example detector"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (train, profiles, attack, evaluate, figures, serve):
        group.register(sub)
    return parser


def check_common(a: argparse.Namespace) -> None:
    """Flags several commands share, checked before any work: --device names a usable device, --out is a directory
    (or, for a command that writes one file, not a directory)."""
    out = getattr(a, "out", None)
    if out is not None and Path(out).exists():
        if getattr(a, "out_is_dir", True) and not Path(out).is_dir():
            raise ValueError(f"--out {out} is a file; expected a directory (created if missing)")
        if not getattr(a, "out_is_dir", True) and Path(out).is_dir():
            raise ValueError(f"--out {out} is a directory; expected a file path for the JSON")
    if getattr(a, "device", None) is not None:
        from detector.runtime import check_device

        check_device(a.device, "--device")


SHARDED = ("profiles", "attack", "evaluate")  # under torchrun their attack batches are shared across processes


def start_process_group(a: argparse.Namespace) -> None:
    """Under torchrun (WORLD_SIZE > 1), the process group the attack batches are shared over (detector/parallel.py):
    gloo on the CPU, NCCL on GPUs. `dnd train` starts its own (training/distributed.py)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        cuda = torch.device(a.device).type == "cuda"
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            a.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    from detector.runtime import tune_malloc

    tune_malloc()  # steadier, faster CPU inference (see detector/runtime.py); a no-op off glibc
    if getattr(a, "threads", 0) and a.command != "serve":
        import torch

        torch.set_num_threads(a.threads)
    try:
        check_common(a)
        if a.command in SHARDED:
            start_process_group(a)
        a.handler(a)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"dnd {a.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
