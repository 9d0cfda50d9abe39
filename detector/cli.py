"""`dnd` command line. Heavy imports happen inside each sub-command, so `dnd --help` is instant."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path


def _add_train(sub: argparse._SubParsersAction) -> None:
    from training.config import TrainConfig

    p = sub.add_parser("train", help="train a dense ResNet-20, or fine-tune the decoupled one (--decouple --init DIR)")
    p.add_argument("--data", required=True, help="CIFAR-10 root: torchvision layout or train/ + test/ image folders")
    p.add_argument("--out", required=True, help="bundle directory to write (checkpoints go to OUT/checkpoint)")
    p.add_argument("--decouple", action="store_true", help="add gates and fine-tune from --init")
    p.add_argument("--init", help="dense bundle to start the decoupled fine-tune from")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    hp = p.add_argument_group("hyper-parameters (defaults in training/config.py)")
    for f in fields(TrainConfig):
        hp.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None, dest=f"hp_{f.name}")


def _cmd_train(a: argparse.Namespace) -> None:
    from training.config import make_config
    from training.train import train

    overrides = {k[3:]: v for k, v in vars(a).items() if k.startswith("hp_") and v is not None}
    train(a.data, a.out, make_config(a.decouple, overrides), decouple=a.decouple, init=a.init,
          resume=a.resume, device=a.device)


def _cmd_stats(a: argparse.Namespace) -> None:
    from detector.bundle import load_model, write_json
    from detector.data import load_split
    from detector.stats import compute_stats

    model = load_model(a.model, a.device)
    test = load_split(a.data, "test")
    stats = {"model": str(a.model), "data_test_fingerprint": test.fingerprint,
             **compute_stats(model, test.x, test.y, device=a.device)}
    out = Path(a.out) if a.out else Path(a.model) / "metrics.json"
    write_json(out, stats)
    from training.plots import plot_filter_states

    plot_filter_states(stats, out.with_name("filter_states.png"))
    fs = stats["filter_states"]
    print(f"test accuracy {stats['test_accuracy']:.4f} | MACs {stats['mean_macs'] / 1e6:.2f}M of "
          f"{stats['dense_macs'] / 1e6:.2f}M (ratio {stats['flops_ratio']:.3f}) | filters activated {fs['activated']}, "
          f"silent {fs['silent']}, dynamic {fs['dynamic']} of {fs['total']} | wrote {out}")


def _cmd_predict(a: argparse.Namespace) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from detector.bundle import load_model

    model = load_model(a.model, a.device)
    for path in a.images:
        with Image.open(path) as im:
            im = im.convert("RGB")
            size = im.size
            resized = size != (32, 32)
            if resized:
                im = im.resize((32, 32), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float().div(255).to(a.device)
        with torch.inference_mode():
            out = model.forward_paths(x)
        p = out.logits.softmax(1)[0]
        k = int(p.argmax())
        rec = {"image": str(path), "label": model.cfg.classes[k], "class_index": k, "probability": round(float(p[k]), 4),
               "resized_from": list(size) if resized else None}
        if out.z:
            rec["open_filters_per_layer"] = [int(z.sum()) for z in out.z]
            rec["path_density"] = round(float(sum(int(z.sum()) for z in out.z) / sum(z.shape[1] for z in out.z)), 4)
        print(json.dumps(rec))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dnd", description="Dynamic Neural Network Decoupling: adversarial-example detector")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    p = sub.add_parser("stats", help="test accuracy, MACs, FLOPs ratio and filter states of a bundle -> metrics.json")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", help="output JSON (default MODEL/metrics.json)")
    p.add_argument("--device", default="cpu")
    p = sub.add_parser("predict", help="classify image files and show their calculation path")
    p.add_argument("--model", default="models/resnet20-decoupled")
    p.add_argument("--device", default="cpu")
    p.add_argument("images", nargs="+")
    a = parser.parse_args(argv)
    if getattr(a, "threads", 0):
        import torch

        torch.set_num_threads(a.threads)
    handler = {"train": _cmd_train, "stats": _cmd_stats, "predict": _cmd_predict}[a.command]
    try:
        handler(a)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"dnd {a.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
