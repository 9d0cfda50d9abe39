"""Cost of one training epoch, decoupled vs dense, measured side by side in one run.

Times the real optimisation step (training.step.train_step: forward with paths, all loss terms, backward,
SGD + Adam) on the same batches, alternating dense and decoupled rounds so machine noise hits both alike.
Five setups: dense; decoupled without distillation; decoupled with distillation from a dense teacher (one extra
no-grad teacher forward per step, under bf16 autocast), i.e. the recipe `dnd train --decouple` runs by default; the
same with the teacher in float32 (--no-kd-teacher-bf16); and offline distillation (--kd-offline: precomputed
teacher logits; its one-off teacher pass over 2 x 50,000 images is timed separately and spread over a --kd-epochs
fine-tune in the amortised ratio).
--recipes times the two shipped recipes instead, as the bundles' config.json record them (batch size, bf16,
distillation and its teacher precision, torch.compile; by default models/resnet20-dense and models/resnet20-decoupled).
--bf16 adds dense and decoupled+kd steps with the trained network's own forward under bf16 autocast (dnd train --bf16).
--arch NAME times another network of the registry (resnet56, vgg19, ...; default resnet20), teacher of the same arch.
Prints median ms/step, the projected CIFAR-10 epoch (50,000 images), and the ratios (target <= 1.5x).
--compile adds the same five setups with the forward + losses through torch.compile (`dnd train --compile`),
timed in the same alternating rounds; their ratios are taken against the faster dense step.
--profile K prints each setup's K most expensive operators (self CPU time over 3 profiled steps).
--count-ops also prints the operators dispatched per step: on a GPU each is a kernel launch of ~5-25 us host
time, so a step made of many tiny ops is bound by the host, not the GPU (measured on an H200: dense 9.3 ms/step,
decoupled 58 ms/step, 6.2x, while the GPU itself was busy ~7 ms of it).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from dataclasses import fields, replace
from pathlib import Path

import torch
from timing import alternating

from detector.config import ModelConfig
from detector.losses import DecouplingLoss
from detector.networks import arch_config, build_model
from detector.networks.macs import dense_macs
from detector.runtime import tune_malloc
from dnd.training.config import TrainConfig, make_config, saved_config
from dnd.training.distill import frozen_teacher, teacher_forward
from dnd.training.step import compiled_step_loss, make_optimizers, step_loss, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--arch", default="resnet20", help="a --arch name of dnd train (default resnet20)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per round and model")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--count-ops", action="store_true", help="also count aten operators per step (torch.profiler)")
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="K",
        help="also print, per setup, the K operators with the most self CPU time over 3 profiled steps "
        "(torch.profiler), to see where the decoupled step's extra time goes",
    )
    ap.add_argument("--lambda-kd", type=float, default=1.0, help="distillation weight of the third setup (> 0)")
    ap.add_argument(
        "--kd-epochs",
        type=int,
        default=20,
        help="fine-tune length over which kd_offline's one-off teacher pass is amortised (the decoupled default)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="run every setup's forward + losses through torch.compile (dnd train --compile); "
        "the compile happens in the warm-up round and is timed separately",
    )
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="also time dense and decoupled+kd with the trained network's forward under bf16 autocast "
        "(dnd train --bf16), beside the float32 steps",
    )
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="skip detector.runtime.tune_malloc (which dnd train calls) to time glibc's defaults",
    )
    ap.add_argument(
        "--recipes",
        nargs="*",
        metavar="BUNDLE",
        default=None,
        help="instead: one epoch of the recipe a dense bundle was trained with against one of its "
        "fine-tune's, each with the settings its config.json records (batch size, bf16, "
        "distillation); two bundle directories, dense then decoupled (default: the shipped pair)",
    )
    a = ap.parse_args()
    # as `dnd train` runs (the `dnd` CLI calls it before every command); a no-op off glibc
    malloc = "not applied (--default-malloc)" if a.default_malloc else "applied" if tune_malloc() else "not applied"
    print(f"tune_malloc: {malloc}")
    if a.recipes is not None:
        return time_recipes(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)  # kernels run async: time to completion
    base = arch_config(a.arch)
    teacher = frozen_teacher(build_model(base), dev)  # as dnd train builds it (a ResNet's BN folded into the convs)
    offline_logits = torch.randn(a.batch_size, 10, device=dev)
    modes = [("", step_loss)] + ([(" compiled", compiled_step_loss())] if a.compile else [])
    setups = {}
    for suffix, loss_fn in modes:  # with --compile every setup runs eager and compiled, side by side
        for name, decouple, kd in (
            ("dense", False, 0.0),
            ("decoupled", True, 0.0),
            ("decoupled+kd", True, a.lambda_kd),
            ("decoupled+kd fp32-teacher", True, a.lambda_kd),
            ("decoupled+kd-offline", True, a.lambda_kd),
            *((("dense bf16", False, 0.0), ("decoupled+kd bf16", True, a.lambda_kd)) if a.bf16 else ()),
        ):
            cfg = make_config(
                decouple,
                {
                    "batch_size": a.batch_size,
                    "lambda_kd": kd,
                    "kd_offline": "offline" in name,
                    **({"kd_teacher_bf16": False} if "fp32" in name else {}),
                    **({"bf16": True} if name.endswith("bf16") else {}),
                },
            )
            model = build_model(replace(base, decoupled=decouple)).to(dev, memory_format=torch.channels_last).train()
            loss = DecouplingLoss([u.cout for u in model.units()], 10).to(dev) if decouple else None
            # offline: the step reads precomputed teacher logits (B, K); their one-off cost is timed below
            teach = (offline_logits if cfg.kd_offline else teacher) if kd else None
            setups[name + suffix] = (
                model,
                loss,
                make_optimizers(model, loss, cfg),
                cfg,
                dense_macs(model),
                teach,
                loss_fn,
            )
    x = torch.rand(a.batch_size, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,), device=dev)
    steps = {
        name: functools.partial(train_step, model, loss, opts, x, y, cfg, 1.0, dense, teach, loss_fn)
        for name, (model, loss, opts, cfg, dense, teach, loss_fn) in setups.items()
    }
    times, warmup = alternating(steps, a.rounds, calls=a.steps, sync=sync)
    print(
        f"device={dev} threads={torch.get_num_threads()} batch={a.batch_size} rounds={a.rounds} steps/round={a.steps}"
        f" compile={a.compile}"
    )
    if a.compile:
        print(
            "warm-up round incl. compilation: "
            + ", ".join(f"{k} {v * a.steps:.0f} s" for k, v in warmup.items() if "comp" in k)
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"{k:30s} {v * 1e3:7.1f} ms/step   epoch (50,000 images) ~{v * 50_000 / a.batch_size:6.1f} s")
    # kd_offline pays 2 teacher forwards per training image once per run (plain + mirrored), not per step
    fwds = []
    bf16 = make_config(True, {}).kd_teacher_bf16  # the teacher precision of the default fine-tune
    with torch.no_grad():
        for _ in range(4):  # the first is a warm-up
            sync()
            t0 = time.perf_counter()
            teacher_forward(teacher, x, bf16)
            sync()
            fwds.append(time.perf_counter() - t0)
    fwd = min(fwds[1:])
    once = 2 * 50_000 / a.batch_size * fwd
    med["decoupled+kd-offline (amortised)"] = med["decoupled+kd-offline"] + once / a.kd_epochs / (50_000 / a.batch_size)
    print(
        f"kd-offline teacher logits, once per run: ~{once:.1f} s; over a {a.kd_epochs}-epoch fine-tune "
        f"~{once / a.kd_epochs:.1f} s per epoch (included in the amortised ratio)"
    )
    for k in ("decoupled", "decoupled+kd", "decoupled+kd fp32-teacher", "decoupled+kd-offline (amortised)"):
        print(f"{k + ' / dense':45s} training cost: {med[k] / med['dense']:.2f}x (target <= 1.5x)")
    if a.bf16:  # the student's own forward under bf16 autocast (dnd train --bf16) against the float32 steps
        print(f"{'dense bf16 / dense':45s} training cost: {med['dense bf16'] / med['dense']:.2f}x")
        print(
            f"{'decoupled+kd bf16 / decoupled+kd':45s} training cost: "
            f"{med['decoupled+kd bf16'] / med['decoupled+kd']:.2f}x"
        )
        print(
            f"{'decoupled+kd bf16 / dense bf16':45s} training cost: "
            f"{med['decoupled+kd bf16'] / med['dense bf16']:.2f}x "
            "(target <= 1.5x)"
        )
    if a.compile:  # against the faster of the two dense steps, so compilation cannot flatter the ratio
        best_dense = min(med["dense"], med["dense compiled"])
        for k in (
            "decoupled compiled",
            "decoupled+kd compiled",
            "decoupled+kd fp32-teacher compiled",
            "decoupled+kd-offline compiled",
        ):
            print(f"{k + ' / best dense':45s} training cost: {med[k] / best_dense:.2f}x (target <= 1.5x)")
        if a.bf16:
            best_bf16 = min(med["dense bf16"], med["dense bf16 compiled"])
            print(
                f"{'decoupled+kd bf16 compiled / best dense bf16':45s} training cost: "
                f"{med['decoupled+kd bf16 compiled'] / best_bf16:.2f}x (target <= 1.5x)"
            )
    if a.count_ops:
        from torch.profiler import profile

        for name, (model, loss, opts, cfg, dense, teach, loss_fn) in setups.items():
            with profile() as prof:
                train_step(model, loss, opts, x, y, cfg, 1.0, dense, teach, loss_fn)
            # outermost aten ops (forward, autograd backward and optimizer), not the ops they call internally
            n = sum(
                1
                for e in prof.events()
                if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
            )
            print(f"{name:21s} {n:6d} aten ops per step (outermost)")
    if a.profile:
        from torch.profiler import profile

        for name, step in steps.items():
            with profile() as prof:
                for _ in range(3):
                    step()
            sync()
            print(f"\n{name}: top {a.profile} operators by self CPU time, 3 steps (profiler overhead included)")
            print(
                prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.profile, max_name_column_width=36)
            )


def recipe(bundle: Path) -> tuple[bool, TrainConfig, bool]:
    """(decoupled?, the training settings, compiled?) as a bundle's config.json records them, over the current
    defaults."""
    found = json.loads((bundle / "config.json").read_text())
    decouple = found.get("phase") == "decoupled"
    names = {f.name for f in fields(TrainConfig)}
    step = {k: v for k, v in saved_config(found["train"]).items() if k in names}  # what shapes one optimisation step
    return decouple, make_config(decouple, step), bool(found.get("compiled", False))


def time_recipes(a: argparse.Namespace) -> None:
    """The two recipes as `dnd train` ran them for a dense bundle and its fine-tune, each at its own batch size and
    precision. A CIFAR-10 epoch is 50,000 images either way, so the epoch cost is ms/step x 50,000 / batch. Data
    loading (and so Cutout) is not in the step. Alternating rounds, as above."""
    bundles = [Path(b) for b in (a.recipes or ("models/resnet20-dense", "models/resnet20-decoupled"))]
    if len(bundles) != 2:
        raise SystemExit(f"--recipes takes two bundle directories (dense, decoupled), found {len(bundles)}")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    teacher = frozen_teacher(build_model(ModelConfig()), dev)
    setups = {}
    recipes = [recipe(b) for b in bundles]
    if [r[0] for r in recipes] != [False, True]:
        kinds = ", ".join(f"{b} ({'decoupled' if r[0] else 'dense'})" for b, r in zip(bundles, recipes))
        raise SystemExit(f"--recipes takes a dense bundle, then a decoupled one; found {kinds}")
    for bundle, (decouple, cfg, compiled) in zip(bundles, recipes):
        notes = ["decoupled" if decouple else "dense"] + ["bf16"] * cfg.bf16 + ["compiled"] * compiled
        if cfg.lambda_kd > 0:
            notes.append("kd teacher " + ("bf16" if cfg.kd_teacher_bf16 else "fp32"))
        name = f"{bundle.name} ({', '.join(notes)})"
        model = build_model(ModelConfig(decoupled=decouple)).to(dev, memory_format=torch.channels_last).train()
        loss = DecouplingLoss([u.cout for u in model.units()], 10).to(dev) if decouple else None
        x = torch.rand(cfg.batch_size, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (cfg.batch_size,), device=dev)
        setups[name] = (
            model,
            loss,
            make_optimizers(model, loss, cfg),
            cfg,
            dense_macs(model),
            teacher if cfg.lambda_kd > 0 else None,
            x,
            y,
            compiled_step_loss() if compiled else step_loss,
        )
    times, _ = alternating(
        {
            name: functools.partial(train_step, model, loss, opts, x, y, cfg, 1.0, dense, teach, fn)
            for name, (model, loss, opts, cfg, dense, teach, x, y, fn) in setups.items()
        },
        a.rounds,
        calls=a.steps,
        sync=sync,
    )
    print(
        f"device={dev} threads={torch.get_num_threads()} rounds={a.rounds} steps/round={a.steps} (recipes of "
        f"{bundles[0]} and {bundles[1]})"
    )
    epoch = []
    for name, (_, _, _, cfg, *_rest) in setups.items():
        med = statistics.median(times[name])
        epoch.append(med * 50_000 / cfg.batch_size)
        print(
            f"{name:55s} batch {cfg.batch_size:3d} {med * 1e3:7.1f} ms/step   epoch (50,000 images) ~{epoch[-1]:6.1f} s"
        )
    print(f"{'fine-tune epoch / dense epoch':55s} training cost: {epoch[1] / epoch[0]:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
