"""Train a dense bundle and three decoupled candidates on a lent GPU inside one wall-clock budget (~9 min a command).

On a GPU these small steps are bound by the host (kernel launches; bench/train_epoch.py --count-ops), so this
(1) trains with batch 512 (a quarter of the launches per epoch; SGD LR scaled linearly with the batch, the gates'
Adam LR by its square root) and (2) runs two `dnd train` processes at a time, each host-bound on its own cores
and feeding the same GPU:

    phase 1: dense-b512  (dense from scratch)      || dec-old-b512 (decoupled from the shipped models/resnet20-dense)
    phase 2: dec-b512    (decoupled from dense-b512) || dec-b512-offline (the same with --kd-offline)

dec-old-b512 tells the batch-512 fine-tune apart from the shipped batch-128 one on the same dense weights; the
phase-2 pair is an A/B of offline against online distillation. Epochs are planned from step times measured on the
device first (bench/train_epoch.py at batch 512, while the JPEGs are decoded), dense first: ~60% of the budget
goes to phase 1. Phase 2 is re-planned from phase 1's measured speed. Every run checkpoints each epoch and is
stopped at the budget, so a cut-off run finishes elsewhere with `dnd train ... --resume` (same flags).

    python scripts/gpu_train.py --data .data --device cuda --budget 540 --out runs/gpu

Writes OUT/plan.json (bench output, plan, per-run seconds and epochs), OUT/<run>/ bundles, OUT/<run>.log, and with
--pack DIR one DIR/<run>.tar per run (bundle, checkpoint and log) to carry back.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

BATCH = 512
DENSE = ["--batch-size", str(BATCH), "--lr", "0.4", "--warmup-epochs", "3"]  # 0.1 at 128, scaled linearly
DECOUPLED = ["--decouple", "--batch-size", str(BATCH), "--lr", "0.12", "--gate-lr", "0.006", "--warmup-epochs", "1"]
SLACK, CONCURRENT = 1.15, 1.3  # estimate margin; slow-down assumed for two processes sharing the GPU
EVAL_S = {"dense": 1.0, "dec": 2.5}  # per-epoch test pass (10,000 images; paths for decoupled) and checkpoint


def epochs_done(out: Path) -> int:
    meta = out / "checkpoint" / "state.json"
    return json.loads(meta.read_text())["epoch"] + 1 if meta.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for everything, from start")
    ap.add_argument("--out", default="runs/gpu")
    ap.add_argument("--pack", default="", help="write one DIR/<run>.tar per run at the end")
    ap.add_argument("--old-dense", default="models/resnet20-dense", help="init of dec-old-b512")
    ap.add_argument("--extra", default="", help="extra dnd train flags for a dry run, e.g. '--limit 1024'")
    ap.add_argument("--train-images", type=int, default=50_000, help="images per epoch (match --limit in --extra)")
    ap.add_argument("--bench-steps", type=int, default=10)
    ap.add_argument("--bench-rounds", type=int, default=3)
    ap.add_argument("--max-dense", type=int, default=200)
    ap.add_argument("--max-dec", type=int, default=40)
    a = ap.parse_args()
    start = time.time()
    deadline = start + a.budget - 10  # leaves time to pack
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    py, extra = sys.executable, a.extra.split()
    # the repo root on the path (a bare GPU machine has no pip install); few CPU threads per process (several run)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "4",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    report: dict = {"device": a.device, "budget_s": a.budget, "batch": BATCH, "runs": {}}

    def save() -> None:
        (out / "plan.json").write_text(json.dumps(report, indent=2))

    decode = subprocess.Popen([py, "-c", f"from detector.data import load_split as l; l({a.data!r}, 'train'); l({a.data!r}, 'test')"], env=env)
    bench = subprocess.run([py, "bench/train_epoch.py", "--device", a.device, "--rounds", str(a.bench_rounds),
                            "--steps", str(a.bench_steps), "--batch-size", str(BATCH)],
                           capture_output=True, text=True, check=True, env=env).stdout
    print(bench, flush=True)
    ms = {k: float(v) for k, v in re.findall(r"^(dense|decoupled\+kd|decoupled\+kd-offline)\s+([\d.]+) ms/step", bench, re.M)}
    if decode.wait() != 0:
        raise SystemExit("could not decode the data")
    steps = a.train_images // BATCH
    t_dense = SLACK * CONCURRENT * (steps * ms["dense"] / 1e3 + EVAL_S["dense"])
    t_dec = SLACK * CONCURRENT * (steps * ms["decoupled+kd"] / 1e3 + EVAL_S["dec"])
    avail = deadline - time.time()
    e_dec = max(1, min(a.max_dec, int(0.4 * avail / t_dec)))
    e_dense = max(1, min(a.max_dense, int((avail - e_dec * t_dec) / t_dense)))
    phase1_s = e_dense * t_dense
    e_old = max(1, min(a.max_dec, int(0.95 * phase1_s / t_dec)))
    report.update(bench=bench, est_epoch_s={"dense": t_dense, "dec": t_dec},
                  planned={"dense-b512": e_dense, "dec-old-b512": e_old, "phase2": e_dec})
    print(f"plan: dense {e_dense} epochs (~{t_dense:.1f} s each) || decoupled from the shipped dense {e_old}; "
          f"then two decoupled runs of ~{e_dec} epochs (~{t_dec:.1f} s each)", flush=True)
    save()

    def launch(name: str, flags: list[str]) -> subprocess.Popen:
        cmd = [py, "-m", "detector.cli", "train", "--data", a.data, "--device", a.device, "--out", str(out / name),
               *flags, *extra]
        print("+", " ".join(cmd), flush=True)
        report["runs"][name] = {"cmd": " ".join(cmd[2:]), "t_start": round(time.time() - start, 1)}
        return subprocess.Popen(cmd, stdout=open(out / f"{name}.log", "w"), stderr=subprocess.STDOUT, env=env)

    procs: dict[str, subprocess.Popen] = {}

    def tick() -> None:
        """Record each run's end (seconds from its start, return code, epochs checkpointed) once it ends."""
        for name, p in procs.items():
            r = report["runs"][name]
            if "rc" not in r and p.poll() is not None:
                r.update(rc=p.returncode, seconds=round(time.time() - start - r["t_start"], 1),
                         epochs_done=epochs_done(out / name))
                save()

    def wait_for(names: list[str]) -> None:
        while any(procs[n].poll() is None for n in names) and time.time() < deadline:
            time.sleep(1)
            tick()

    t1 = time.time()
    procs["dense-b512"] = launch("dense-b512", DENSE + ["--epochs", str(e_dense)])
    procs["dec-old-b512"] = launch("dec-old-b512", DECOUPLED + ["--init", a.old_dense, "--epochs", str(e_old)])
    wait_for(["dense-b512"])
    if procs["dense-b512"].poll() == 0:
        # re-plan phase 2 from this machine's measured dense speed (same factor for the decoupled step)
        factor = (time.time() - t1) / (e_dense * t_dense)
        e_dec = max(1, min(a.max_dec, int((deadline - time.time()) / (t_dec * factor))))
        report["planned"].update(phase2_replanned=e_dec, speed_factor=round(factor, 3))
        print(f"dense finished ({factor:.2f} x the estimate): phase 2 gets {e_dec} epochs", flush=True)
        init = ["--init", str(out / "dense-b512"), "--epochs", str(e_dec)]
        procs["dec-b512"] = launch("dec-b512", DECOUPLED + init)
        procs["dec-b512-offline"] = launch("dec-b512-offline", DECOUPLED + init + ["--kd-offline"])
    wait_for(list(procs))
    for p in procs.values():  # at the deadline: stopped runs keep their last finished epoch's checkpoint
        if p.poll() is None:
            p.terminate()
            p.wait()
    tick()
    report["total_s"] = round(time.time() - start, 1)
    save()
    if a.pack:
        Path(a.pack).mkdir(parents=True, exist_ok=True)
        for name in report["runs"]:
            with tarfile.open(Path(a.pack) / f"{name}.tar", "w") as tar:
                for p in (out / name, out / f"{name}.log"):
                    if p.exists():
                        tar.add(p, arcname=p.name)
    print(json.dumps({k: v for k, v in report.items() if k != "bench"}, indent=2), flush=True)


if __name__ == "__main__":
    main()
