"""Does a fine-tune step cost more late in a run than the bench's fresh model suggests? Side by side in one process.

A real 30-epoch fine-tune's noisy epochs took 122-148 s of training steps, while bench/train_epoch.py projects ~105 s.
This times the same optimisation step (training.step.train_step, default --decouple recipe, bf16 teacher) on real
training images for: a decoupled model fresh from the dense bundle vs a trained decoupled bundle; noisy SemHash
(noise 1, half hard; epochs 1..N-4) vs eval-time paths (the 4 final epochs); denormal flushing off vs on. Setups
alternate within each round, so machine noise hits all alike; round 0 is a warm-up. Prints median ms/step and the
projected epoch (50,000 images). Stop any background training first.

    python bench/step_modes.py --data .data --dense models/resnet20-dense --trained models/resnet20-decoupled
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from detector.bundle import load_model
from detector.data import load_split, to_unit_float
from detector.losses import DecouplingLoss
from detector.model import build_model
from detector.stats import dense_macs
from training.config import make_config
from training.distill import frozen_teacher
from training.step import make_optimizers, train_step
from training.train import init_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--dense", default="models/resnet20-dense", help="teacher and the fresh model's init")
    ap.add_argument("--trained", default="models/resnet20-decoupled", help="a trained decoupled bundle")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="steps per round and setup")
    a = ap.parse_args()
    torch.manual_seed(0)
    cfg = make_config(True, {})
    train = load_split(a.data, "train")
    b = cfg.batch_size
    xs = [
        to_unit_float(train.x[i * b : (i + 1) * b]).contiguous(memory_format=torch.channels_last)
        for i in range(a.steps)
    ]
    ys = [train.y[i * b : (i + 1) * b].long() for i in range(a.steps)]
    teacher = load_model(a.dense).eval().requires_grad_(False)
    fresh = build_model(replace(teacher.cfg, decoupled=True))  # as `dnd train --decouple --init DENSE` starts
    init_weights(fresh, teacher, Path(a.dense))
    fresh = fresh.to(memory_format=torch.channels_last)
    teacher = frozen_teacher(teacher, torch.device("cpu"))  # as dnd train builds it (BN folded)
    models = {"fresh": fresh, "trained": load_model(a.trained)}
    setups = {}
    for name, m in models.items():
        m.train()
        loss = DecouplingLoss([u.cout for u in m.units()], 10)
        setups[name] = (m, loss, make_optimizers(m, loss, cfg), dense_macs(m))
    keys = [(n, hard, flush) for n in setups for hard in (False, True) for flush in (False, True)]
    times: dict[tuple[str, bool, bool], list[float]] = {k: [] for k in keys}
    for r in range(a.rounds + 1):
        for k in keys:
            n, hard, flush = k
            m, loss, opts, dense = setups[n]
            m.set_gate_training(
                noise_std=0.0 if hard else m.cfg.gate_noise_std, p_hard=1.0 if hard else 0.5
            )  # as train.py
            torch.set_flush_denormal(flush)
            t0 = time.perf_counter()
            for x, y in zip(xs, ys):
                train_step(m, loss, opts, x, y, cfg, 1.0, dense, teacher)
            if r:
                times[k].append((time.perf_counter() - t0) / a.steps)
    torch.set_flush_denormal(False)
    print(f"threads={torch.get_num_threads()} batch={b} rounds={a.rounds} steps/round={a.steps}")
    for (n, hard, flush), v in times.items():
        med = statistics.median(v)
        print(
            f"{n:8s} {'eval-time paths' if hard else 'noisy SemHash  '} flush_denormal={flush!s:5s} "
            f"{med * 1e3:6.1f} ms/step   epoch ~{med * 50_000 / b:5.1f} s"
        )


if __name__ == "__main__":
    main()
