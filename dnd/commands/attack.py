"""`dnd attack`: adversarial sets (torchattacks) on correctly classified test images, to inspect or send to the
service."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..args import add_device, attack_names, count


def register(sub: argparse._SubParsersAction) -> None:
    from detector.attacks import ATTACKS

    p = sub.add_parser("attack", help="adversarial sets (torchattacks) on correctly classified test images")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument(
        "--attack",
        default="fgsm,pgd,cw,deepfool",
        help=f"comma-separated names from detector/attacks.py: {', '.join(ATTACKS)}; a transferred one may name the "
        "bundle it is crafted on, NAME@PATH (else --source)",
    )
    p.add_argument("--split", choices=["evaluation", "calibration"], default="evaluation")
    p.add_argument("--limit", type=count, default=0, help="class-balanced number of images (0 = the whole split)")
    p.add_argument("--out", required=True, help="directory for NAME.safetensors")
    p.add_argument(
        "--png",
        action="store_true",
        help="also write the successful attacks as 8-bit PNGs, "
        "OUT/NAME/NNNNN-<class>-as-<predicted>.png (those still misclassified once rounded to 8 bits), "
        "to send to the service",
    )
    p.add_argument("--source", default="models/resnet20-dense", help="the network transfer attacks are crafted on")
    p.add_argument("--batch-size", type=count, default=250, help="images per attack batch (the unit torchrun shares)")
    p.add_argument("--seed", type=int, default=0)
    add_device(p)
    p.set_defaults(handler=cmd_attack, out_is_dir=True)


def cmd_attack(a: argparse.Namespace) -> None:
    from detector.attacks import file_stem, run_attack, save_attack_set, write_pngs
    from detector.bundle import load_model
    from detector.data import check_classes, load_split
    from detector.parallel import is_main
    from detector.splits import balanced_subset, split_test
    from detector.transfer import TransferSources

    model = load_model(a.model, a.device)
    test = load_split(a.data, "test", model.cfg.input_size)
    check_classes(test, model.cfg.classes, f"--data against the bundle {a.model}")
    cal_idx, ev_idx = split_test(test.y, model.cfg.num_classes)
    idx = balanced_subset(
        {"calibration": cal_idx, "evaluation": ev_idx}[a.split], test.y, a.limit, model.cfg.num_classes
    )
    names = attack_names(a.attack)
    sources = TransferSources(a.source, model.cfg.classes, a.device)
    for name in names:
        src = sources.network(name)
        s = run_attack(model, name, test.x[idx], test.y[idx], max(a.batch_size, 1), a.seed, a.device, src)
        if not is_main():  # under torchrun process 0 writes what every process has gathered
            continue
        stem = file_stem(name)
        path = save_attack_set(s, Path(a.out) / f"{stem}.safetensors")
        print(
            f"{name}: {int(s.success.sum())} of {len(s.y)} correctly classified {a.split} images misclassified after "
            f"the attack (success rate {s.success_rate:.4f}), max Linf {float((s.x_adv - s.x_clean).abs().max()):.4f} "
            f"| wrote {path}"
        )
        if a.png:
            written, before = write_pngs(s, model, Path(a.out) / stem, model.cfg.classes, a.device)
            print(
                f"{name}: {written} of {before} successful attacks still misclassified as 8-bit images | wrote "
                f"{Path(a.out) / stem}/*.png"
            )
