"""Inference speed: dense vs decoupled with every filter computed and masked vs decoupled computing only the open
filters (detector/sparse.py), side by side in alternating rounds, at batch 1, 8 and 64 on 1 and 2 threads.

Rows (median ms per batch, img/s):
  dense              the dense network's forward (--dense, models/resnet20-dense), TorchScript-traced
  masked             the decoupled network's forward_paths (logits + paths), traced: what the service runs
  sparse             the open-filters-only engine (detector/sparse.py for CIFAR ResNets, else the fx rewrite), traced
  dense eager, masked eager       the same two forwards without tracing (`det.model(x)` as a user calls it)
  dense compiled, masked compiled the same through torch.compile (inductor), with --compile
  masked+detect      Detector.predict on the masked forward (paths scored, threshold; bundles with profiles only)
  sparse+detect      Detector.predict on the sparse forward
Ratios: dense / X (above 1 = X faster than dense) and masked / sparse; the FLOPs ratio of the decoupled model
(measured on the images) is the bound computing only open filters could reach on the convolutions.

--arch NAME --open P times a registry network without a bundle or data (any registered architecture):
random weights, random images, each gate's bias set so that each of its filters opens for a share P of the images
(per-image paths, as a trained network's dynamic filters; a trained one also has always-open and never-open filters).
Rows dense, masked, sparse; the sparse row is the open-filters engine of detector/networks/open_filters.py for a
decouple()d network.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from timing import alternating, medians

from detector import arch_config, build_model, load_detector, load_model
from detector.api import open_filters_engine
from detector.data import load_split, to_unit_float
from detector.profiles import PROFILES
from detector.runtime import tune_malloc
from detector.stats import compute_stats


def traced(module: torch.nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(module, x, check_trace=False)


class _Paths(torch.nn.Module):
    def __init__(self, m: torch.nn.Module) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        o = self.m.forward_paths(x)
        return o.logits, o.z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dense", default="models/resnet20-dense")
    ap.add_argument("--model", default="models/resnet20-decoupled")
    ap.add_argument("--data", default=".data")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=40, help="calls per round at batch 1 (fewer for larger batches)")
    ap.add_argument("--compile", action="store_true", help="add the torch.compile rows (compiles for ~1 min)")
    ap.add_argument("--arch", help="time this registry network (random weights; no bundle, no data) instead")
    ap.add_argument("--open", type=float, default=0.5, help="with --arch: the share of images each filter opens for")
    ap.add_argument("--size", type=int, default=32, help="with --arch: the input side in pixels (default 32)")
    a = ap.parse_args()
    tune_malloc()
    if a.arch:
        return synthetic(a)
    test = load_split(a.data, "test")
    x_all = to_unit_float(test.x[torch.randperm(len(test.y), generator=torch.Generator().manual_seed(0))[:512]])
    dense = load_model(a.dense).eval()
    # a bundle without profiles (a network not yet profiled) is timed without the +detect rows
    detect = (Path(a.model) / PROFILES).is_file()
    gated = load_model(a.model).eval()
    dets = (
        {
            "masked+detect": load_detector(a.model).trace(),
            "sparse+detect": load_detector(a.model, engine="sparse").trace(),
        }
        if detect
        else {}
    )
    flops = compute_stats(gated, x_all, test.y[:0].new_zeros(len(x_all)))["flops_ratio"]
    nets = {
        "dense": traced(dense, x_all[:8]),
        "masked": traced(_Paths(gated), x_all[:8]),
        "sparse": traced(open_filters_engine(gated), x_all[:8]),
        "dense eager": dense,
        "masked eager": _Paths(gated),
    }
    if a.compile:  # inductor compiles once per batch size, on the first call (the warm-up rounds)
        nets["dense compiled"] = torch.compile(dense)
        nets["masked compiled"] = torch.compile(_Paths(gated))
    print(f"decoupled FLOPs ratio on these images: {flops:.3f} (bound on the conv speed-up: {1 / flops:.2f}x)")
    for threads in map(int, a.threads.split(",")):
        torch.set_num_threads(threads)
        for b in map(int, a.batches.split(",")):
            calls = max(3, a.calls // b)
            xs = [x_all[(i * b) % 512 : (i * b) % 512 + b] for i in range(calls)]
            fns = {
                **{k: (lambda n=n, xs=xs: [n(x) for x in xs]) for k, n in nets.items()},
                **{k: (lambda d=d, xs=xs: [d.predict(x) for x in xs]) for k, d in dets.items()},
            }
            with torch.inference_mode():
                # ms per image batch: each function makes `calls` forward calls
                med = {k: v / calls * 1e3 for k, v in medians(alternating(fns, a.rounds, warmup=2)[0]).items()}
            print(
                f"threads {threads} batch {b}: "
                + ", ".join(f"{k} {v:.2f} ms ({b / v * 1e3:.0f} img/s)" for k, v in med.items())
            )
            print(
                f"    dense/masked {med['dense'] / med['masked']:.2f}x, "
                f"dense/sparse {med['dense'] / med['sparse']:.2f}x, "
                f"masked/sparse {med['masked'] / med['sparse']:.2f}x"
                + (f", detect masked/sparse {med['masked+detect'] / med['sparse+detect']:.2f}x" if detect else "")
            )


def synthetic(a: argparse.Namespace) -> None:
    """--arch: dense vs masked vs open filters only on a random network whose filters open for a share a.open of the
    images (see the module docstring)."""
    from dataclasses import replace

    torch.manual_seed(0)
    cfg = replace(arch_config(a.arch), input_size=a.size)
    x_all = torch.rand(512, 3, a.size, a.size)
    dense, gated = build_model(cfg).eval(), build_model(replace(cfg, decoupled=True)).eval()
    gated.load_state_dict(dense.state_dict(), strict=False)  # the same convs: only the gates differ
    with torch.inference_mode():  # each gate's bias, in forward order (a gate's inputs depend on earlier paths)
        for unit in gated.units():
            unit.gate.fc2.bias.zero_()
        for l, unit in enumerate(gated.units()):
            s = gated.forward_paths(x_all[:256]).s[l]  # (256, C_l): its filters now open for a share a.open
            unit.gate.fc2.bias.sub_(s.quantile(1 - a.open, 0))
        out = gated.forward_paths(x_all)
    opened = float(torch.cat([z.flatten() for z in out.z]).mean())
    from detector.networks.macs import dense_macs, macs_per_sample

    ratio = float(macs_per_sample(gated, out.z).mean()) / dense_macs(gated)
    nets = {
        "dense": traced(dense, x_all[:8]),
        "masked": traced(_Paths(gated), x_all[:8]),
        "sparse": traced(open_filters_engine(gated), x_all[:8]),
    }
    print(
        f"{a.arch}: filters open {opened:.3f} of the time; FLOPs ratio {ratio:.3f} "
        f"(bound on the speed-up {1 / ratio:.2f}x)"
    )
    for threads in map(int, a.threads.split(",")):
        torch.set_num_threads(threads)
        for b in map(int, a.batches.split(",")):
            calls = max(3, a.calls // b)
            xs = [x_all[(i * b) % 512 : (i * b) % 512 + b] for i in range(calls)]
            fns = {k: (lambda n=n, xs=xs: [n(x) for x in xs]) for k, n in nets.items()}
            with torch.inference_mode():
                med = {k: v / calls * 1e3 for k, v in medians(alternating(fns, a.rounds)[0]).items()}
            print(f"threads {threads} batch {b}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items()))
            print(
                f"    dense/masked {med['dense'] / med['masked']:.2f}x, "
                f"dense/sparse {med['dense'] / med['sparse']:.2f}x"
            )


if __name__ == "__main__":
    main()
