"""Cost of path scoring on top of plain classification, measured side by side in one run.

plain:   det.model(x)      (logits only)
scored:  det.predict(x)    (logits + paths + per-layer distances + `path` score + threshold)
Rounds alternate so machine noise hits both alike. Prints median ms per batch, img/s and the overhead
(target: scoring adds <= 10%), then the scoring stages alone on the same batch's paths (path features, `path`
score), to show what the scoring steps themselves cost beside the end-to-end ratio, and the tree walk in torch ops
(level by level) that the compiled walk of `TreeEnsemble.raw` replaced, kept here only as the side-by-side reference.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor

from detector import load_detector
from detector.interpretation.explain import path_svg
from detector.runtime import tune_malloc
from detector.trees import TreeEnsemble


def torch_level_walk(trees: TreeEnsemble, features: Tensor) -> Tensor:
    """(N, F) -> (N, K) log-odds in torch ops, level by level: all images and trees advance one level per step
    (one row fetch of [feature, threshold, left child] per node, trees sorted deepest first so level k touches only
    the trees deeper than k), ~8 torch ops per level."""
    x = features.float()
    n, (t, m) = len(x), trees.feature.shape
    left = trees.left + (torch.arange(t) * m)[:, None]
    table = torch.stack([trees.feature.float(), trees.threshold, left.float()], -1).reshape(t * m, 3)
    node = (torch.arange(t) * m).repeat(n, 1)  # (N, T) global node index
    for a in [int((trees.depth > k).sum()) for k in range(int(trees.depth[0]))]:
        rows = table.index_select(0, node[:, :a].reshape(-1)).view(n, a, 3)
        node[:, :a] = rows[..., 2].long() + (x.gather(1, rows[..., 0].long()) > rows[..., 1])
    leaves = trees.value.flatten().index_select(0, node.reshape(-1)).view(n, t)
    return trees.baseline.repeat(n, 1).index_add_(1, trees.group, leaves)


def median_seconds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, called in alternating rounds so machine noise hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/resnet20-decoupled")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="skip detector.runtime.tune_malloc (which dnd and the service call) to time glibc's defaults",
    )
    a = ap.parse_args()
    if not a.default_malloc:
        print(f"tune_malloc: {'applied' if tune_malloc() else 'not applied'}")
    torch.set_num_threads(a.threads)
    det = load_detector(a.model)
    x = torch.rand(a.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def plain() -> None:
        with torch.inference_mode():
            det.model(x)

    def scored() -> None:
        det.predict(x, batch_size=a.batch_size)

    for _ in range(2):  # warm-up
        plain(), scored()
    med = median_seconds({"plain": plain, "scored": scored}, a.rounds)
    for k, v in med.items():
        print(f"{k:>7}: {v * 1e3:7.1f} ms per batch of {a.batch_size} ({a.batch_size / v:7.0f} img/s)")
    print(f"scoring overhead: {med['scored'] / med['plain'] - 1:+.1%} (target <= +10%), threads {a.threads}")
    with torch.inference_mode():
        out = det.model.forward_paths(x)
        labels, z = out.logits.argmax(1), [zl.bool() for zl in out.z]
        feats = det.path_features(z, labels, out.s)
        trees = det.profiles.scorer.trees
        fns = {
            "path features": lambda: det.path_features(z, labels, out.s),
            "path score": lambda: det.profiles.scorer.score(feats),
        }
        if trees is not None:
            if not torch.allclose(torch_level_walk(trees, feats), trees.raw(feats), rtol=0, atol=1e-9):
                raise SystemExit("the reference torch walk and TreeEnsemble.raw disagree")
            fns["path score, torch level walk (reference)"] = lambda: torch_level_walk(trees, feats)
        stages = median_seconds(fns, a.rounds)
    for k, v in stages.items():
        print(f"  stage {k}: {v * 1e3:6.2f} ms per batch ({v / med['plain']:+.1%} of plain)")
    # the explain picture (POST /explain, `dnd predict --explain`) at batch 1: one predict, then the SVG of its path
    x1 = x[:1]

    def predict1() -> None:
        det.predict(x1)

    def explained1() -> None:
        p = det.predict(x1)
        c = int(p.labels[0])
        path_svg([zl[0] for zl in p.paths], [f[c] for f in det.profiles.freq], det.classes[c], float(p.scores[0]))

    for _ in range(3):
        predict1(), explained1()
    one = median_seconds({"predict": predict1, "predict + explain SVG": explained1}, a.rounds * 4)
    base, pic = one["predict"], one["predict + explain SVG"]
    print(
        f"batch 1: predict {base * 1e3:.2f} ms, with the explain SVG {pic * 1e3:.2f} ms: "
        f"the picture adds {(pic - base) * 1e3:.2f} ms per image (target <= 20 ms)"
    )
    if trees is not None:
        d = trees.depth.double()
        print(
            f"tree scorer: {len(trees.depth)} trees in {len(trees.baseline)} model(s), mean depth {d.mean():.1f}, "
            f"at most {int(d.max())} levels"
        )


if __name__ == "__main__":
    main()
