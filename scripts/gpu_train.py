"""Train both shipped bundles on a GPU inside a hard wall-clock budget (a lent GPU gives ~10 minutes per command).

1. times the real training step (bench/train_epoch.py) for dense and decoupled + distillation on this device,
   while the JPEGs are decoded into the cache;
2. plans epochs greedily so that the whole run fits: (dense 60, decoupled 20) -> decoupled 30 -> dense 100 ->
   decoupled 40 -> dense 150;
3. `dnd train` the dense bundle, re-plans the decoupled epochs from the dense run's measured speed, then
   `dnd train --decouple --init` the decoupled bundle from it. Each run checkpoints every epoch and is killed at
   the budget, so whatever was cut off can be finished elsewhere with `dnd train ... --resume`.

--compile times and trains with torch.compile; on a GPU the eager decoupled step is bound by kernel launches
(bench/train_epoch.py), which is what compilation removes. Not yet run on a GPU.
Writes OUT/plan.json (timings, planned and finished epochs). The commands are exactly the ones a user would run:
    python scripts/gpu_train.py --data .data --device cuda --budget 550 --out-plan plan.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

STAGES = [("dense", 60), ("dec", 20), ("dec", 30), ("dense", 100), ("dec", 40), ("dense", 150)]


def plan(avail: float, t_dense: float, t_dec: float) -> tuple[int, int]:
    """Greedy (dense epochs, decoupled epochs) within `avail` seconds; (0, n) if even the minimum does not fit."""
    if 60 * t_dense + 20 * t_dec > avail:
        return 0, max(1, min(40, int(avail / t_dec)))
    e = {"dense": 60, "dec": 20}
    for kind, n in STAGES[2:]:
        other = "dec" if kind == "dense" else "dense"
        t_kind, t_other = (t_dense, t_dec) if kind == "dense" else (t_dec, t_dense)
        fit = int((avail - e[other] * t_other) / t_kind)
        e[kind] = max(e[kind], min(n, fit))
        if fit < n:
            break
    return e["dense"], e["dec"]


def run(cmd: list[str], deadline: float) -> tuple[int, float]:
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    try:
        rc = subprocess.run(cmd, timeout=max(deadline - time.time(), 1)).returncode
    except subprocess.TimeoutExpired:
        rc = 124
    return rc, time.time() - t0


def epochs_done(out: Path) -> int:
    meta = out / "checkpoint" / "state.json"
    return json.loads(meta.read_text())["epoch"] + 1 if meta.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=550.0, help="seconds for everything, from start")
    ap.add_argument("--dense-out", default="models/resnet20-dense")
    ap.add_argument("--dec-out", default="models/resnet20-decoupled")
    ap.add_argument("--out-plan", default="plan.json")
    ap.add_argument("--extra", default="", help="extra dnd train flags for a dry run, e.g. '--limit 512'")
    ap.add_argument("--train-images", type=int, default=50_000, help="images per epoch (match --limit in --extra)")
    ap.add_argument("--bench-steps", type=int, default=20)
    ap.add_argument("--compile", action="store_true",
                    help="time and train with torch.compile (dnd train --compile): fewer kernel launches per step; "
                         "the planner charges each run its measured compile time (twice for the decoupled run)")
    a = ap.parse_args()
    start = time.time()
    deadline = start + a.budget - 15  # leaves time to pack the results
    py, extra = sys.executable, a.extra.split()
    report: dict = {"device": a.device, "budget_s": a.budget}

    warm = subprocess.Popen([py, "-c", f"from detector.data import load_split as l; l({a.data!r}, 'train'); l({a.data!r}, 'test')"])
    # the repo root on the path: on a bare GPU machine the project is not pip-installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    bench = subprocess.run([py, "bench/train_epoch.py", "--device", a.device, "--rounds", "3", "--steps", str(a.bench_steps),
                            *(["--compile"] if a.compile else [])], capture_output=True, text=True, check=True, env=env).stdout
    print(bench, flush=True)
    suffix = " compiled" if a.compile else ""
    ms = {k.replace(suffix, ""): float(v) for k, v in
          re.findall(rf"^(dense{suffix}|decoupled\+kd{suffix})\s+([\d.]+) ms/step", bench, re.M)}
    # compile time of each run (the bench's warm-up round); the decoupled run compiles again for its hard epochs
    warm_s = {k: float(v) for k, v in re.findall(r"(dense|decoupled\+kd) compiled (\d+) s", bench)} if a.compile else {}
    if warm.wait() != 0:
        raise SystemExit("could not decode the data")
    # Step time + host-side augmentation/copy (~1.5 ms/step) + per-epoch test pass and checkpoint (~3 s); 15% slack.
    steps = a.train_images // 128
    t_dense = 1.15 * (steps * (ms["dense"] + 1.5) / 1e3 + 3)
    t_dec = 1.15 * (steps * (ms["decoupled+kd"] + 1.5) / 1e3 + 3)
    compile_s = warm_s.get("dense", 0.0) + 2 * warm_s.get("decoupled+kd", 0.0)
    e_dense, e_dec = plan(deadline - time.time() - compile_s, t_dense, t_dec)
    report.update(bench=bench, est_epoch_s={"dense": t_dense, "dec": t_dec}, planned={"dense": e_dense, "dec": e_dec})
    print(f"plan: dense {e_dense} epochs (~{t_dense:.1f} s each), decoupled {e_dec} (~{t_dec:.1f} s each)", flush=True)

    def save() -> None:
        Path(a.out_plan).write_text(json.dumps(report, indent=2))

    save()
    base = [py, "-m", "detector.cli", "train", "--data", a.data, "--device", a.device, *extra,
            *(["--compile"] if a.compile else [])]
    if e_dense:
        rc, secs = run(base + ["--out", a.dense_out, "--epochs", str(e_dense)], deadline)
        report["dense"] = {"rc": rc, "seconds": secs, "epochs_done": epochs_done(Path(a.dense_out))}
        save()
        if rc == 0:  # re-plan with the measured speed of this machine (same ratio for the decoupled step)
            factor = secs / (e_dense * t_dense)
            e_dec = max(1, min(40, int((deadline - time.time() - 2 * warm_s.get("decoupled+kd", 0.0)) / (t_dec * factor))))
            report["planned"]["dec_replanned"] = e_dec
    rc, secs = run(base + ["--out", a.dec_out, "--decouple", "--init", a.dense_out, "--epochs", str(e_dec)], deadline)
    report["dec"] = {"rc": rc, "seconds": secs, "epochs_done": epochs_done(Path(a.dec_out))}
    report["total_s"] = time.time() - start
    save()


if __name__ == "__main__":
    main()
