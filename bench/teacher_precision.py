"""Does the distillation teacher need float32? Its logits in bfloat16 (autocast) vs float32, on real training views.

The teacher only supplies soft targets p_t = softmax(teacher(x) / T); the student's distillation gradient w.r.t. its
logits is T * (p_s - p_t). This script measures, on augmented training images (the views a fine-tune sees):
  - how far the bf16 targets are from the fp32 ones (L1 distance of p_t, KL, top-1 agreement, largest logit change),
  - next to the size of the signal they feed: the L1 distance between the student's p_s and the fp32 p_t
    (student = the decoupled bundle, in training mode as in a fine-tune step),
  - and the teacher's forward time per batch in both precisions, side by side (alternating rounds).
`python bench/teacher_precision.py --data .data` (shipped bundles by default).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from detector.bundle import load_model
from detector.data import load_split, to_unit_float
from training.augment import augment, crop_flip_params
from training.distill import frozen_teacher, teacher_forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="CIFAR-10 root (either layout)")
    ap.add_argument("--teacher", default="models/resnet20-dense")
    ap.add_argument("--student", default="models/resnet20-decoupled")
    ap.add_argument("--images", type=int, default=5000, help="augmented training views compared")
    ap.add_argument("--batch-size", type=int, default=128, help="the fine-tune's batch (timing)")
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    teacher = frozen_teacher(load_model(a.teacher), torch.device("cpu"))  # as dnd train builds it (BN folded)
    student = load_model(a.student).train()
    train = load_split(a.data, "train")
    idx = torch.randperm(len(train), generator=gen)[: a.images]
    x = to_unit_float(train.x[idx])
    ij, flip = crop_flip_params(len(idx), gen)
    x = augment(x, ij, flip).contiguous(memory_format=torch.channels_last)
    t = a.temperature

    l32, lbf, ls = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), 500):
            xb = x[i : i + 500]
            l32.append(teacher_forward(teacher, xb, bf16=False))
            lbf.append(teacher_forward(teacher, xb, bf16=True))
            ls.append(student(xb))
    l32, lbf, ls = torch.cat(l32), torch.cat(lbf), torch.cat(ls)
    p32, pbf, ps = (F.softmax(v / t, 1) for v in (l32, lbf, ls))
    d_prec = (pbf - p32).abs().sum(1)  # (N,) what bf16 changes in the targets
    d_sig = (ps - p32).abs().sum(1)  # (N,) the distillation signal itself
    kl = F.kl_div(F.log_softmax(lbf / t, 1), F.log_softmax(l32 / t, 1), reduction="none", log_target=True).sum(1)
    print(f"{len(x)} augmented training views, T={t}, teacher {a.teacher}, student {a.student} (training mode)")
    print(
        f"teacher top-1 agreement bf16 vs fp32: {(l32.argmax(1) == lbf.argmax(1)).float().mean():.4%}; "
        f"largest logit change {float((lbf - l32).abs().max()):.4f} (logit range {float(l32.abs().max()):.1f})"
    )
    print(
        f"L1(p_t bf16 - p_t fp32): mean {float(d_prec.mean()):.2e}, max {float(d_prec.max()):.2e}; "
        f"KL(fp32 || bf16) mean {float(kl.mean()):.2e}"
    )
    print(
        f"L1(p_s - p_t fp32) (the signal distillation feeds): mean {float(d_sig.mean()):.2e}; "
        f"ratio of means {float(d_prec.mean() / d_sig.mean()):.2e}"
    )

    xb = x[: a.batch_size]
    unfolded = load_model(a.teacher).requires_grad_(False)  # the same network with its BatchNorm layers
    nets = {"BN folded": teacher, "unfolded": unfolded}
    times: dict[tuple[str, bool], list[float]] = {(n, b): [] for n in nets for b in (False, True)}
    with torch.no_grad():
        for r in range(a.rounds + 1):  # round 0 warms all up
            for n, bf16 in times:
                t0 = time.perf_counter()
                teacher_forward(nets[n], xb, bf16)
                if r:
                    times[n, bf16].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for n in nets:
        m32, mbf = med[n, False], med[n, True]
        print(
            f"teacher forward ({n}), batch {a.batch_size}, {torch.get_num_threads()} threads: fp32 {m32 * 1e3:.1f} ms, "
            f"bf16 {mbf * 1e3:.1f} ms ({m32 / mbf:.2f}x faster)"
        )


if __name__ == "__main__":
    main()
