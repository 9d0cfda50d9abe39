"""DeepFool as `dnd` runs it (batched Jacobian, detector/attacks.py) against torchattacks' own, side by side.

On N correctly classified real test images: time of each (alternating, two rounds each), their success rates and
mean L2 perturbations, and the largest pixel difference between their adversarial images.
`python bench/deepfool.py --data .data` (shipped decoupled bundle by default).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchattacks

from detector.attacks import ATTACKS, make_attack
from detector.bundle import load_model
from detector.data import load_split, to_unit_float


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, help="CIFAR-10 root (either layout)")
    ap.add_argument("--model", default="models/resnet20-decoupled")
    ap.add_argument("--images", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    model = load_model(a.model)
    test = load_split(a.data, "test")
    x, y = to_unit_float(test.x[: 2 * a.images]), test.y[: 2 * a.images]
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    x, y = x[ok][: a.images], y[ok][: a.images]
    attacks = {
        "torchattacks": torchattacks.DeepFool(model, **ATTACKS["deepfool"].params),
        "batched Jacobian": make_attack("deepfool", model),
    }
    times: dict[str, list[float]] = {k: [] for k in attacks}
    advs = {}
    for _ in range(a.rounds):
        for name, attack in attacks.items():
            t0 = time.perf_counter()
            advs[name] = attack(x, y)
            times[name].append(time.perf_counter() - t0)
    for name, adv in advs.items():
        with torch.no_grad():
            success = float((model(adv).argmax(1) != y).float().mean())
        l2 = float((adv - x).flatten(1).norm(dim=1).mean())
        print(
            f"{name:17s} {statistics.median(times[name]):6.1f} s for {len(x)} images (rounds: "
            f"{', '.join(f'{t:.1f}' for t in times[name])}), success {success:.3f}, mean L2 {l2:.4f}"
        )
    ref, ours = advs["torchattacks"], advs["batched Jacobian"]
    per_image = (ours - ref).flatten(1).abs().max(1).values
    print(
        f"largest pixel difference {float(per_image.max()):.2e}; images differing by more than 1e-4: "
        f"{int((per_image > 1e-4).sum())} of {len(x)}; speed-up "
        f"{statistics.median(times['torchattacks']) / statistics.median(times['batched Jacobian']):.2f}x"
    )


if __name__ == "__main__":
    main()
