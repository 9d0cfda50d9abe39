"""Wall-clock of one process against two torchrun processes on one machine, side by side in one run.

Two jobs, each run as the user runs it (`dnd ...` as a subprocess, process start-up and data loading included):
- train: `dnd train` (dense, 1 epoch on --train-images class-balanced CIFAR-10 images, global batch 256, bf16), one
  process with all --threads against `torchrun --nproc_per_node 2` with --threads / 2 each (same global batch, so
  the same optimisation: tests/test_distributed.py checks the weights agree);
- attack: `dnd attack --attack pgd` on --attack-images calibration images (the unit `dnd profiles` and
  `dnd evaluate` share out), one process against two, each process attacking every other batch.
The rounds alternate (one, two, one, two, ...) so machine noise hits both alike; the median of --rounds is reported
with the ratio two / one. On one machine two processes split the same cores, so the ratio tells the cost of the
distributed machinery (gloo all-reduce, gather), not a speed-up: that needs more cores or machines (README).

    python bench/distributed.py --data .data [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from timing import alternating

ROOT = Path(__file__).resolve().parents[1]


def dnd(args: list[str], processes: int) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [sys.executable, *(launcher if processes > 1 else []), "-m", "dnd", *args]


def run(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")


def train_args(a: argparse.Namespace, out: Path, threads: int) -> list[str]:
    return ["train", "--data", str(a.data), "--out", str(out), "--limit", str(a.train_images), "--threads",
            str(threads), "--epochs", "1", "--eval-limit", "500", "--batch-size", "256", "--bf16"]  # fmt: skip


def attack_args(a: argparse.Namespace, out: Path, threads: int) -> list[str]:
    return ["attack", "--model", str(a.model), "--data", str(a.data), "--limit", str(a.attack_images), "--out",
            str(out), "--threads", str(threads), "--attack", "pgd", "--split", "calibration",
            "--batch-size", "50"]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "resnet20-decoupled")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="cores in all, split among processes")
    ap.add_argument("--train-images", type=int, default=20480)
    ap.add_argument("--attack-images", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the medians here")
    a = ap.parse_args()
    per = max(1, a.threads // 2)
    with tempfile.TemporaryDirectory() as tmp:
        count = itertools.count()

        def job(name: str, make: Callable[..., list[str]], n: int, threads: int) -> Callable[[], None]:
            return lambda: run(dnd(make(a, Path(tmp) / f"{name}-{n}-{next(count)}", threads), n))

        fns = {
            (name, n): job(name, make, n, threads)
            for name, make in (("train", train_args), ("attack", attack_args))
            for n, threads in ((1, a.threads), (2, per))
        }
        times, _ = alternating(fns, a.rounds, warmup=0)
        # the same optimisation to float rounding (which 80 SGD steps at LR 0.1 amplify; the test checks the weights
        # after a few small steps): the first round's train runs are runs 0 and 1
        ce = [json.loads((Path(tmp) / run_dir / "train_history.json").read_text())[-1]["train_ce"]
              for run_dir in ("train-1-0", "train-2-1")]  # fmt: skip
        print(f"train_ce after the epoch: 1 process {ce[0]:.4f}, 2 processes {ce[1]:.4f}")
    print(f"\n| job | 1 process x {a.threads} threads | 2 processes x {per} | 2 / 1 |\n|---|---|---|---|")
    medians = {}
    for job, work in (("train", f"1 epoch, {a.train_images} images"), ("attack", f"PGD, {a.attack_images} images")):
        one, two = (statistics.median(times[(job, n)]) for n in (1, 2))
        medians[job] = {"one": one, "two": two, "ratio": two / one}
        print(f"| {job} ({work}) | {one:.1f} s | {two:.1f} s | {two / one:.2f} |")
    if a.json:
        a.json.write_text(json.dumps(medians, indent=1) + "\n")


if __name__ == "__main__":
    main()
