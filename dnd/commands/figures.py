"""`dnd figures` (the interpretation figures and their data) and `dnd samples` (the web page's sample images)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..args import add_device, count


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "figures",
        help="interpretation figures (class paths, adversarial paths, embeddings, "
        "filter-class weights, filter images) with their data, from a decoupled bundle",
    )
    p.add_argument("--model", default="models/resnet20-decoupled")
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="reports/interpretation")
    p.add_argument("--limit", type=count, default=2000, help="test images (class-balanced) for the clean paths")
    p.add_argument(
        "--source", type=int, default=0, help="class index attacked to others (default 0; CIFAR-10: airplane)"
    )
    p.add_argument(
        "--target",
        type=int,
        help="class index others are attacked to (default 8, CIFAR-10's ship; the last class if fewer)",
    )
    add_device(p)
    p.set_defaults(handler=cmd_figures, out_is_dir=True)

    p = sub.add_parser(
        "samples",
        help="the bundle's sample images for the web page, into MODEL/samples: clean test images and PGD-attacked "
        "ones made on its weights (8-bit PNG, still misclassified once rounded)",
    )
    p.add_argument("--model", default="models/resnet20-decoupled")
    p.add_argument("--data", required=True)
    p.add_argument("--n", type=count, default=4, help="images of each kind")
    add_device(p)
    p.set_defaults(handler=cmd_samples)


def cmd_figures(a: argparse.Namespace) -> None:
    from detector.bundle import load_model
    from detector.interpretation import figures

    model = load_model(a.model, a.device)
    if not model.cfg.decoupled:
        raise ValueError(f"{a.model} is a dense bundle: calculation paths need a decoupled one (with gates)")
    k = model.cfg.num_classes
    target = min(8, k - 1) if a.target is None else a.target
    if not (0 <= a.source < k and 0 <= target < k and a.source != target):
        raise ValueError(
            f"--source and --target: two different class indices in 0..{k - 1}, found {a.source}, {target}"
        )
    summary = figures(model, a.data, a.out, a.limit, a.source, target)
    for name, sentence in summary.items():
        print(f"{name}: {sentence}")
    print(f"wrote {a.out}/*.png, *.json")


def cmd_samples(a: argparse.Namespace) -> None:
    import torch
    import torchattacks

    from detector.attacks import to_uint8
    from detector.bundle import load_model
    from detector.data import check_classes, load_split, to_unit_float
    from detector.samples import write_samples
    from detector.splits import split_test

    model = load_model(a.model, a.device)
    classes = model.cfg.classes
    test = load_split(a.data, "test", model.cfg.input_size)
    check_classes(test, classes, f"--data against the bundle {a.model}")
    _, ev = split_test(test.y, len(classes))
    idx = ev[torch.randperm(len(ev), generator=torch.Generator().manual_seed(3))[: 20 * a.n]]
    x, y = to_unit_float(test.x[idx]), test.y[idx]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok], y[ok]
    torch.manual_seed(0)
    adv = to_uint8(torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10)(x, y))
    with torch.no_grad():
        fooled = model(adv.float() / 255).argmax(1)
    clean, attacked, seen = [], [], set()
    for i in range(len(y)):  # n clean images of distinct classes, then n attacked ones
        if len(clean) < a.n and int(y[i]) not in seen:
            seen.add(int(y[i]))
            clean.append((to_uint8(x[i]), classes[int(y[i])]))
    for i in range(len(y)):
        if len(attacked) < a.n and fooled[i] != y[i]:
            attacked.append((adv[i], classes[int(y[i])], classes[int(fooled[i])]))
    out = write_samples(Path(a.model), clean, attacked)
    print(f"wrote {len(clean)} clean and {len(attacked)} attacked samples to {out}")
