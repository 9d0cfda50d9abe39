"""Inference and attack speed in the channels_last layout `load_model` gives, against NCHW, side by side in one run.

Loads the detector twice: as `load_detector` returns it (channels_last weights) and converted back to NCHW; times
`det.predict` (traced, as the service runs it) at batch 256 and at batch 1, and one 10-step PGD batch (torchattacks, as
`dnd evaluate` and `dnd profiles` run it), in alternating rounds; then checks that both layouts give the same labels,
scores and flags. `python bench/layout.py` (shipped bundle by default).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from detector import load_detector
from detector.attacks import make_attack
from detector.runtime import tune_malloc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/resnet20-decoupled")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--pgd-images", type=int, default=250, help="images per PGD batch (dnd's attack batch)")
    a = ap.parse_args()
    tune_malloc()  # as the service and dnd do
    dets = {"channels_last": load_detector(a.model).trace(), "nchw": load_detector(a.model)}
    dets["nchw"].model.to(memory_format=torch.contiguous_format)
    dets["nchw"].trace()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(256, 3, 32, 32, generator=gen)
    y = dets["nchw"].predict(x).labels
    times: dict[str, list[float]] = {}
    for r in range(a.rounds + 1):  # round 0 warms up
        for name, det in dets.items():
            t0 = time.perf_counter()
            det.predict(x)
            t1 = time.perf_counter()
            for _ in range(20):
                det.predict(x[:1])
            if r:
                times.setdefault(f"{name} b256", []).append(t1 - t0)
                times.setdefault(f"{name} b1", []).append((time.perf_counter() - t1) / 20)
    for r in range(4):  # PGD after all predict rounds (it is slow); round 0 warms up
        for name, det in dets.items():
            t0 = time.perf_counter()
            make_attack("pgd", det.model)(x[: a.pgd_images], y[: a.pgd_images])
            if r:
                times.setdefault(f"{name} pgd", []).append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"threads {torch.get_num_threads()}, {a.rounds} rounds, medians:")
    for what, unit, label in (
        ("b256", 1e3, "det.predict, batch 256 (ms)"),
        ("b1", 1e3, "det.predict, batch 1 (ms)"),
        ("pgd", 1.0, f"PGD 10 steps, {a.pgd_images} images (s)"),
    ):
        cl, nchw = med[f"channels_last {what}"] * unit, med[f"nchw {what}"] * unit
        print(f"  {label:34s} nchw {nchw:8.2f}  channels_last {cl:8.2f}  ({nchw / cl:.2f}x faster)")
    p = {k: det.predict(x) for k, det in dets.items()}
    same = torch.equal(p["nchw"].labels, p["channels_last"].labels) and torch.equal(
        p["nchw"].is_adversarial, p["channels_last"].is_adversarial
    )
    diff = float((p["nchw"].scores - p["channels_last"].scores).abs().max())
    print(f"same labels and flags on the batch: {same}; largest score difference {diff:.2e}")


if __name__ == "__main__":
    main()
