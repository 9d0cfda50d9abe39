"""`dnd predict` (image files from the command line) and `dnd serve` (the HTTP service)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..args import add_device, count, port


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files and show their calculation path")
    p.add_argument("--model", default="models/resnet20-decoupled")
    add_device(p, threads=False)
    p.add_argument(
        "--explain",
        metavar="DIR",
        help="also write each image's calculation path against its class "
        "signature as DIR/<image name>.svg (needs the bundle's profiles)",
    )
    p.add_argument("images", nargs="+")
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser(
        "serve", help="HTTP service (FastAPI + uvicorn); other settings from DND_* environment variables"
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument(
        "--model", default=None, help="bundle directory (default: DND_MODEL_DIR or models/resnet20-decoupled)"
    )
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--log-level", default="info")
    p.add_argument(
        "--threads",
        type=count,
        default=0,
        help="torch threads for large batches (default: DND_THREADS or all cores; small batches use 1)",
    )
    p.set_defaults(handler=cmd_serve)


def cmd_predict(a: argparse.Namespace) -> None:
    import torch

    from detector.api import load_detector
    from detector.bundle import load_model
    from detector.images import ImageError, decode_image
    from detector.profiles import PROFILES

    # every path checked before the model loads and before any line is printed
    bad = [f"{p} ({'a directory' if Path(p).is_dir() else 'not found'})" for p in a.images if not Path(p).is_file()]
    if bad:
        raise ValueError(f"expected image files, found: {', '.join(bad)}")
    # the detector when the bundle has profiles (`dnd profiles`); otherwise the bare classifier and its path
    det = load_detector(a.model, a.device) if (Path(a.model) / PROFILES).is_file() else None
    if a.explain and det is None:
        raise ValueError(
            f"--explain draws the path against the class profiles, and {a.model} has none: run dnd profiles"
        )
    model = det.model if det else load_model(a.model, a.device)
    for path in a.images:
        try:
            x, resized = decode_image(Path(path).read_bytes(), 4096 * 4096, model.cfg.input_size)
        except ImageError as e:
            raise ValueError(f"{path}: {e}") from None
        if det:
            d = det.predict(x[None])
            p, z = d.probs[0], d.paths
        else:
            with torch.inference_mode():
                out = model.forward_paths(x[None].to(a.device))
            p, z = out.logits.softmax(1)[0], out.z
        k = int(p.argmax())
        rec = {
            "image": str(path),
            "label": model.cfg.classes[k],
            "class_index": k,
            "probability": round(float(p[k]), 4),
            "resized_from": resized,
        }
        if det:
            rec |= {
                "attack_score": round(float(d.scores[0]), 4),
                "is_adversarial": bool(d.is_adversarial[0]),
                "threshold": round(det.threshold, 4),
            }
        if a.explain:
            from detector.interpretation import path_svg

            svg = path_svg(
                [zl[0] for zl in z],
                [f[k] for f in det.profiles.freq],
                model.cfg.classes[k],
                float(d.scores[0]),
                det.threshold,
            )
            Path(a.explain).mkdir(parents=True, exist_ok=True)
            (Path(a.explain) / f"{Path(path).stem}.svg").write_text(svg)
            rec["explain"] = str(Path(a.explain) / f"{Path(path).stem}.svg")
        if z:
            rec["open_filters_per_layer"] = [int(zl.sum()) for zl in z]
            rec["path_density"] = round(float(sum(int(zl.sum()) for zl in z) / sum(zl.shape[1] for zl in z)), 4)
        print(json.dumps(rec))


def cmd_serve(a: argparse.Namespace) -> None:
    from dnd.service.server import run

    overrides = {k: v for k, v in {"model_dir": a.model, "threads": a.threads or None, "device": a.device}.items() if v}
    run(a.host, a.port, a.log_level, overrides)
