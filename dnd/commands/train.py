"""`dnd train` (dense, decoupled, adversarial) and `dnd stats` (accuracy, MACs, filter states of a bundle)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from ..args import add_device

if TYPE_CHECKING:
    from dnd.training.config import TrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    from dnd.training.config import TrainConfig

    p = sub.add_parser(
        "train",
        help="train a dense network (ResNet-20 by default; --arch), or its decoupled fine-tune (--decouple --init DIR)",
    )
    p.add_argument(
        "--data",
        required=True,
        help="a torchvision CIFAR-10 / CIFAR-100 root, or train/<class>/ + test/<class>/ image folders (any classes)",
    )
    p.add_argument("--out", required=True, help="bundle directory to write (checkpoints go to OUT/checkpoint)")
    p.add_argument("--decouple", action="store_true", help="add gates and fine-tune from --init")
    p.add_argument(
        "--init",
        help="bundle to start from: dense (with --decouple the gates are new; without, a warm "
        "restart: a new LR cycle from its weights) or decoupled (a further fine-tuning stage)",
    )
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint")
    arch = p.add_argument_group("architecture of a run without --init (with it, the --init bundle's)")
    arch.add_argument(
        "--arch",
        default="resnet20",
        help="resnet20, resnet32, resnet44, resnet56, resnet110 (CIFAR ResNets), vgg11, vgg13, vgg16, vgg19 (the "
        "network-slimming VGG), or package.module:function, your own builder: called with num_classes=K, it returns "
        "a dense nn.Module CNN ending in an nn.Linear, which --decouple gates (default resnet20)",
    )
    arch.add_argument(
        "--blocks-per-stage",
        type=int,
        help="CIFAR ResNets: basic blocks per stage, depth 6n + 2 (3: ResNet-20, 5: 32, 7: 44, 9: 56, 18: 110)",
    )
    arch.add_argument(
        "--widths", help="channels per stage, comma-separated (resnet: 16,32,64; vgg: 64,128,256,512,512)"
    )
    arch.add_argument(
        "--size",
        type=int,
        help="side in pixels the network reads; every image is resized to it (default: the data's own, which must "
        "then be one square size)",
    )
    add_device(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the forward + losses of each step (inductor; "
        "on CPU needs a C++ compiler; compiles for ~1-3 min at the start and at the switch to hard paths)",
    )
    hp = p.add_argument_group("hyper-parameters (defaults in dnd/training/config.py)")
    for f in fields(TrainConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if isinstance(f.default, bool):  # --kd-offline / --no-kd-offline (type=bool would read "False" as True)
            hp.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, dest=f"hp_{f.name}")
        else:
            hp.add_argument(flag, type=type(f.default), default=None, dest=f"hp_{f.name}")
    p.set_defaults(handler=cmd_train, out_is_dir=True)

    p = sub.add_parser(
        "convert",
        help="store a bundle's conv and linear weights in float16 (half the file; `dnd stats` again after)",
    )
    p.add_argument("--model", required=True, help="bundle to convert")
    p.add_argument("--out", required=True, help="bundle to write (may be --model itself: replaced in place)")
    p.add_argument("--weights-dtype", choices=("float16", "float32"), default="float16")
    p.set_defaults(handler=cmd_convert, out_is_dir=True)

    p = sub.add_parser("stats", help="test accuracy, MACs, FLOPs ratio and filter states of a bundle -> metrics.json")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--out",
        help="output JSON file (default MODEL/metrics.json; an existing file is replaced), "
        "with filter_states.png beside it",
    )
    p.add_argument(
        "--robust-eps",
        type=float,
        default=8.0,
        help="also record PGD-10 accuracy at this Linf budget in pixel steps (default 8 = 8/255; 0 = skip)",
    )
    p.add_argument("--robust-limit", type=int, default=1000, help="class-balanced test images for it")
    add_device(p)
    p.set_defaults(handler=cmd_stats, out_is_dir=False)


def train_config(a: argparse.Namespace) -> TrainConfig:
    """The TrainConfig a parsed `dnd train` command line asks for: the defaults plus its hyper-parameter flags."""
    from dnd.training.config import make_config

    return make_config(a.decouple, {k[3:]: v for k, v in vars(a).items() if k.startswith("hp_") and v is not None})


def model_config(a: argparse.Namespace):
    """The architecture a parsed `dnd train` command line asks for; None with --init (the bundle's own is used)."""
    from dataclasses import replace

    from detector.networks import arch_config

    shaped = a.arch != "resnet20" or a.widths is not None or a.blocks_per_stage is not None or a.size is not None
    if a.init:
        if shaped:
            raise ValueError("--arch / --widths / --blocks-per-stage / --size shape a new network: --init's is used")
        return None
    cfg = arch_config(a.arch)
    if a.widths is not None:
        widths = tuple(int(w) for w in a.widths.split(",") if w.strip())
        if len(widths) != len(cfg.widths) or min(widths) < 1:
            raise ValueError(
                f"--widths: expected {len(cfg.widths)} positive channel counts for {a.arch}, found {a.widths!r}"
            )
        cfg = replace(cfg, widths=widths)
    if a.blocks_per_stage is not None:
        if cfg.arch != "cifar_resnet" or a.blocks_per_stage < 1:
            raise ValueError(
                f"--blocks-per-stage: a positive count, for the CIFAR ResNets only "
                f"(found {a.blocks_per_stage} for {a.arch})"
            )
        cfg = replace(cfg, blocks_per_stage=a.blocks_per_stage)
    if a.size is not None and a.size < 8:
        raise ValueError(f"--size: expected at least 8 pixels, found {a.size}")
    return cfg


def cmd_train(a: argparse.Namespace) -> None:
    from dnd.training.train import train

    train(
        a.data,
        a.out,
        train_config(a),
        decouple=a.decouple,
        init=a.init,
        resume=a.resume,
        device=a.device,
        model_cfg=model_config(a),
        compile_step=a.compile,
        size=a.size,
    )


def cmd_convert(a: argparse.Namespace) -> None:
    import torch

    from detector.bundle import METRICS, load_model, read_config, save_bundle
    from detector.profiles import PROFILES

    if (Path(a.out) / PROFILES).is_file():
        raise ValueError(
            f"{a.out} has profiles of the weights it holds: convert into a new folder, then `dnd profiles`"
        )
    config = read_config(a.model)
    if Path(a.out).resolve() == Path(a.model).resolve() and config.get("weights_dtype", "float32") == a.weights_dtype:
        print(f"{a.model} already holds {a.weights_dtype} weights: nothing to do")
        return
    keep = {k: v for k, v in config.items() if k not in ("model", "weights_sha256", "weights_dtype", "libraries")}
    keep["converted_from"] = {"weights_sha256": config["weights_sha256"], "weights_dtype": config.get("weights_dtype")}
    model = load_model(a.model).to(memory_format=torch.contiguous_format)
    out = save_bundle(model, a.out, keep, a.weights_dtype)
    (out / METRICS).unlink(missing_ok=True)  # measured on the weights before: `dnd stats` measures these
    print(f"wrote {out} ({a.weights_dtype} weights); run `dnd stats --model {out} --data DIR` to measure it")


def cmd_stats(a: argparse.Namespace) -> None:
    from detector.bundle import load_model, write_json
    from detector.data import check_classes, load_split
    from detector.stats import compute_stats
    from dnd.training.plots import plot_filter_states

    model = load_model(a.model, a.device)
    test = load_split(a.data, "test", model.cfg.input_size)
    check_classes(test, model.cfg.classes, f"--data against the bundle {a.model}")
    stats = {
        "model": str(a.model),
        "data_test_fingerprint": test.fingerprint,
        **compute_stats(model, test.x, test.y, device=a.device),
    }
    if a.robust_eps > 0:
        from dnd.training.adversarial import pgd_test_accuracy

        stats["test_robust_accuracy"] = pgd_test_accuracy(model, test, a.robust_eps, a.robust_limit, a.device)
        stats["robust_eval"] = {"attack": "PGD-10, random start", "eps": a.robust_eps, "images": a.robust_limit}
    out = Path(a.out) if a.out else Path(a.model) / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, stats)
    plot_filter_states(stats, out.with_name("filter_states.png"))
    fs = stats["filter_states"]
    print(
        f"test accuracy {stats['test_accuracy']:.4f} | MACs {stats['mean_macs'] / 1e6:.2f}M of "
        f"{stats['dense_macs'] / 1e6:.2f}M (ratio {stats['flops_ratio']:.3f}) | filters activated {fs['activated']}, "
        f"silent {fs['silent']}, dynamic {fs['dynamic']} of {fs['total']}"
        + (f" | PGD-10 {a.robust_eps:g}/255 accuracy {stats['test_robust_accuracy']:.4f}" if a.robust_eps > 0 else "")
        + f" | wrote {out}"
    )
