"""Cost of path scoring on top of plain classification, measured side by side in one run.

plain:   det.model(x)      (logits only)
scored:  det.predict(x)    (logits + paths + the score's inputs + `path` score + threshold)
Rounds alternate so machine noise hits both alike. Prints median ms per batch, img/s and the overhead, then the
scoring stages alone on the same batch (the stacked forward with the consistency transforms, the score's inputs, the
`path` score). With --copies-beside, det.predict (eager and traced) at batch 1, 8, 16 and 64 with the bfloat16
copies' forward run beside the images' in a helper thread and after it, side by side, at 1 and 2 threads
(detector/api.py COPIES_BESIDE forced on and off). With --baseline-profiles (e.g. profiles that read the path
features only: `git show REV:models/resnet20-decoupled/profiles.safetensors > old.safetensors`), det.predict under
both profiles at batch 1 and 64, side by side: what the served score's extra families cost. With --float32-copies,
det.predict at batch 1 and 64 as the bundle's profiles say (bfloat16 copies) and with the same copies in float32,
side by side: what bfloat16 profiles cost or save on this CPU (timing only: the score is calibrated on the first).
With --chunks 64,128,512, det.predict over --images images in chunks of each size, side by side.
"""

from __future__ import annotations

import argparse

import torch
from timing import alternating, medians

from detector import load_detector
from detector.inputs import forward_stacked
from detector.interpretation.explain import path_svg
from detector.runtime import tune_malloc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/resnet20-decoupled")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline-profiles", help="profiles.safetensors of the same weights to compare det.predict with")
    ap.add_argument("--trace", action="store_true", help="compare both detectors traced, as the service runs them")
    ap.add_argument(
        "--copies-beside", action="store_true", help="time the copies' forward beside the images' and after"
    )
    ap.add_argument(
        "--default-malloc",
        action="store_true",
        help="skip detector.runtime.tune_malloc (which dnd and the service call) to time glibc's defaults",
    )
    ap.add_argument(
        "--float32-copies", action="store_true", help="time the copies in the profiles' precision against float32"
    )
    ap.add_argument(
        "--chunks",
        help="comma-separated batch_size values: det.predict over --images images in chunks of each, side by side",
    )
    ap.add_argument("--images", type=int, default=2048, help="images for --chunks")
    a = ap.parse_args()
    if not a.default_malloc:
        print(f"tune_malloc: {'applied' if tune_malloc() else 'not applied'}")
    torch.set_num_threads(a.threads)
    if a.copies_beside:
        return copies_beside(a.model, a.rounds)
    if a.float32_copies:
        return float32_copies(a.model, a.rounds)
    if a.chunks:
        return chunks(a.model, [int(c) for c in a.chunks.split(",")], a.images, a.rounds)
    det = load_detector(a.model)
    x = torch.rand(a.batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def plain() -> None:
        with torch.inference_mode():
            det.model(x)

    def scored() -> None:
        det.predict(x, batch_size=a.batch_size)

    med = medians(alternating({"plain": plain, "scored": scored}, a.rounds, warmup=2)[0])
    for k, v in med.items():
        print(f"{k:>7}: {v * 1e3:7.1f} ms per batch of {a.batch_size} ({a.batch_size / v:7.0f} img/s)")
    print(f"scoring overhead: {med['scored'] / med['plain'] - 1:+.1%} (target <= +10%), threads {a.threads}")
    with torch.inference_mode():
        out = forward_stacked(det.model, x, det.profiles.spec)
        out.z = [zl.bool() for zl in out.z]
        feats = det.score_inputs(out)
        trees = det.profiles.scorer.trees
        fns = {
            f"stacked forward ({1 + len(det.profiles.spec.transforms)} x the batch)": lambda: forward_stacked(
                det.model, x, det.profiles.spec
            ),
            "score inputs": lambda: det.score_inputs(out),
            "path score": lambda: det.profiles.scorer.score(feats),
        }
        stages = medians(alternating(fns, a.rounds)[0])
    for k, v in stages.items():
        print(f"  stage {k}: {v * 1e3:6.2f} ms per batch ({v / med['plain']:+.1%} of plain)")
    if a.baseline_profiles:
        compare(det, a.model, a.baseline_profiles, a.rounds, a.trace)
    # the explain picture (POST /explain, `dnd predict --explain`) at batch 1: one predict, then the SVG of its path
    x1 = x[:1]

    def predict1() -> None:
        det.predict(x1)

    def explained1() -> None:
        p = det.predict(x1)
        c = int(p.labels[0])
        path_svg([zl[0] for zl in p.paths], [f[c] for f in det.profiles.freq], det.classes[c], float(p.scores[0]))

    one = medians(alternating({"predict": predict1, "predict + explain SVG": explained1}, a.rounds * 4, warmup=3)[0])
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


def compare(det, model: str, baseline_profiles: str, rounds: int, trace: bool = False) -> None:
    """det.predict under the served profiles and under `baseline_profiles` (same weights), at batch 1 and 64;
    `trace`: both through TorchScript, as the service runs them (Detector.trace)."""
    import shutil
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "baseline"
        shutil.copytree(model, other)
        shutil.copyfile(baseline_profiles, other / "profiles.safetensors")
        base = load_detector(other)
        if trace:
            det, base = load_detector(model).trace(), base.trace()
        reads = det.score_reads()["families"], base.score_reads()["families"]
        print(f"traced: {trace}; served reads {reads[0]}, baseline reads {reads[1]}")
        for n in (1, 64):
            xb = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))
            fns = {"baseline": lambda xb=xb: base.predict(xb), "served": lambda xb=xb: det.predict(xb)}
            med = medians(alternating(fns, rounds * (4 if n == 1 else 1), warmup=2)[0])
            print(
                f"det.predict at batch {n}: baseline {med['baseline'] * 1e3:.2f} ms, served {med['served'] * 1e3:.2f} "
                f"ms, ratio {med['served'] / med['baseline']:.2f}"
            )


def float32_copies(model: str, rounds: int) -> None:
    """det.predict with the consistency copies in the profiles' precision and in float32, eager, at batch 1 and 64."""
    from detector.runtime import native_bf16

    det, f32 = load_detector(model), load_detector(model)
    if det.spec.precision == "float32":
        print("these profiles already run their copies in float32")
        return
    # the same profiles with float32 copies: the features move by bfloat16's rounding, so only the time is compared
    f32.profiles.meta["features"] = {**f32.profiles.meta["features"], "precision": "float32"}
    f32.spec = f32.profiles.spec
    print(f"copies in {det.spec.precision} against float32; native bfloat16 on this CPU: {native_bf16(det.device)}")
    for n in (1, 64):
        xb = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        fns = {"profiles": lambda xb=xb: det.predict(xb), "float32": lambda xb=xb: f32.predict(xb)}
        med = medians(alternating(fns, rounds * (4 if n == 1 else 1), warmup=2)[0])
        print(
            f"det.predict at batch {n}: {det.spec.precision} copies {med['profiles'] * 1e3:.2f} ms, float32 copies "
            f"{med['float32'] * 1e3:.2f} ms, ratio {med['profiles'] / med['float32']:.2f}"
        )


def chunks(model: str, sizes: list[int], n: int, rounds: int) -> None:
    """det.predict over n images in chunks of each size, side by side (an evaluation's or a test's long call)."""
    det = load_detector(model)
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    rows = 1 + len(det.spec.transforms)  # stacked rows per image
    fns = {str(b): lambda b=b: det.predict(x, batch_size=b) for b in sizes}
    med = medians(alternating(fns, rounds, warmup=1)[0])
    best = min(med.values())
    for b, v in med.items():
        print(
            f"det.predict over {n} images in chunks of {b:>4} ({int(b) * rows:>5} stacked rows): {v:6.2f} s "
            f"({n / v:5.0f} img/s, {v / best:.2f}x the fastest)"
        )


def copies_beside(model: str, rounds: int) -> None:
    """det.predict with the copies' forward beside the images' (a helper thread) and after it, eager and traced."""
    from detector import api

    dets = {"eager": load_detector(model), "traced": load_detector(model).trace()}
    if dets["eager"].spec.precision == "float32":
        print("these profiles run one float32 forward: nothing to put beside it")
        return
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for n in (1, 8, 16, 64):
            xb = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
            for kind, det in dets.items():

                def run(beside: bool, det=det, xb=xb) -> None:
                    api.COPIES_BESIDE = beside
                    det.predict(xb)

                fns = {"after": lambda: run(False), "beside": lambda: run(True)}
                med = medians(alternating(fns, rounds * (4 if n <= 8 else 1), warmup=2)[0])
                print(
                    f"threads {threads} batch {n:2d} {kind:6s}: after {med['after'] * 1e3:6.2f} ms, beside "
                    f"{med['beside'] * 1e3:6.2f} ms, after / beside {med['after'] / med['beside']:.2f}"
                )
    api.COPIES_BESIDE = None


if __name__ == "__main__":
    main()
