"""Service load test against a live `dnd serve` on 127.0.0.1, with the raw model throughput measured in the same run.

Starts the server as a subprocess (`--workers N`: N uvicorn workers), sends real CIFAR-10 test JPEGs to POST /predict
at concurrency 1, 8 and 64 (aiohttp client, asyncio), and prints p50/p95/p99 latency, throughput and errors per level,
the server's resident memory after each level and soak round, /healthz latency while one maximal request (64 PNGs
of 4096 x 4096) is decoded, resident memory over --reloads bundle reloads, and the ratio of service throughput at the
highest concurrency to the raw batched throughput of `det.predict` (the same model + scoring, no HTTP). Targets on
2 cores: ratio >= 0.6 at concurrency 64, p99 <= 50 ms at concurrency 8 (<= 30 ms with the acceleration), zero errors,
flat memory, /healthz p99 <= 50 ms during the maximal request.

`--v2` instead times Open Inference Protocol v2 infer requests of 64 images sent as JSON tensors and as binary
tensors (binary tensor data extension, binary outputs), alternating one of each per round on one keep-alive
connection at concurrency 1, and prints the medians and the binary / JSON ratio (target <= 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from timing import alternating, medians


def rss_mib(pid: int) -> float:
    """Resident memory of the process and its children (uvicorn's workers), MiB."""
    total = 0.0
    for p in [pid, *children(pid)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def maximal_request(n: int = 64, side: int = 4096) -> bytes:
    """The largest request the default limits accept: n all-black side x side PNGs as one JSON batch."""
    import base64
    import io
    import json

    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, "PNG")
    return json.dumps({"images": [base64.b64encode(buf.getvalue()).decode()] * n}).encode()


async def healthz_during(base: str, body: bytes) -> tuple[list[float], float]:
    """/healthz latencies (s) polled every 10 ms while one maximal request is decoded, and that request's time."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as client:
        t0 = time.perf_counter()
        big = asyncio.ensure_future(
            client.post(f"{base}/predict", data=body, headers={"content-type": "application/json"})
        )
        lat = []
        while not big.done():
            t = time.perf_counter()
            async with client.get(f"{base}/healthz") as r:
                await r.read()
            lat.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
        r = await big
        assert r.status == 200, r.status
        return lat, time.perf_counter() - t0


def v2_bodies(images: list[bytes], n: int = 64) -> tuple[bytes, tuple[bytes, dict[str, str]]]:
    """The same n decoded images as an OIP v2 JSON request and as a binary-tensor-data request (body, headers)."""
    import io
    import json

    x = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), np.float32) / 255 for b in images[:n]])
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    as_json = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    header = json.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return as_json, (header + x.astype("<f4").tobytes(), {"inference-header-content-length": str(len(header))})


def v2_compare(base: str, images: list[bytes], rounds: int = 30) -> None:
    as_json, (binary, headers) = v2_bodies(images)
    url = f"{base}/v2/models/{httpx.get(f'{base}/v1/model').json()['name']}/infer"
    with httpx.Client(timeout=60) as c:
        fns = {
            "json": lambda: c.post(
                url, content=as_json, headers={"content-type": "application/json"}
            ).raise_for_status(),
            "binary": lambda: c.post(url, content=binary, headers=headers).raise_for_status(),
        }
        med = {k: v * 1e3 for k, v in medians(alternating(fns, rounds, warmup=2)[0]).items()}
    print(
        f"OIP v2 infer, 64 images, {rounds} alternating rounds: JSON {len(as_json) / 1e6:.2f} MB {med['json']:.1f} ms, "
        f"binary {len(binary) / 1e6:.2f} MB {med['binary']:.1f} ms (median); binary / JSON = "
        f"{med['binary'] / med['json']:.2f} (target <= 1.0)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, images: list[bytes], n: int, concurrency: int) -> tuple[list[float], int, float]:
    """n POSTs from `concurrency` workers over keep-alive connections (aiohttp: httpx's client alone topped out
    at ~150 requests/s on this machine, less than the server)."""
    import aiohttp

    lat: list[float] = []
    errors = 0
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as client:

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                t0 = time.perf_counter()
                try:
                    async with client.post(
                        url, data=images[i % len(images)], headers={"content-type": "image/jpeg"}
                    ) as r:
                        body = await r.read()
                        ok = r.status == 200 and body.startswith(b'{"model"')
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                lat.append(time.perf_counter() - t0)
                errors += not ok

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return lat, errors, wall


def raw_throughput(
    model_dir: str, images: list[bytes], threads: int, batch: int = 64, rounds: int = 20, malloc: bool = True
) -> float:
    from detector import load_detector
    from detector.runtime import tune_malloc

    if malloc:
        tune_malloc()  # as `dnd serve` does
    torch.set_num_threads(threads)
    det = load_detector(model_dir).trace()  # the same forward the service runs (DND_TRACE defaults to on)
    x = (
        torch.stack(
            [
                torch.from_numpy(np.array(Image.open(__import__("io").BytesIO(b)).convert("RGB"))).permute(2, 0, 1)
                for b in images[:batch]
            ]
        ).float()
        / 255
    )
    det.predict(x)
    t0 = time.perf_counter()
    for _ in range(rounds):
        det.predict(x)
    return rounds * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="models/resnet20-decoupled")
    ap.add_argument("--data", default=".data", help="image-folder root with test/<class>/*.jpg")
    ap.add_argument("--requests", default="1000,3000,6000", help="requests at concurrency 1,8,64 (10,000 in all)")
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="server torch threads for large batches (DND_THREADS; 0 = its default, all cores)",
    )
    ap.add_argument("--parallel-min-batch", type=int, default=0, help="DND_PARALLEL_MIN_BATCH (0 = server default)")
    ap.add_argument("--max-wait-ms", type=float, default=0.0, help="server micro-batch wait (DND_MAX_WAIT_MS)")
    ap.add_argument(
        "--soak",
        type=int,
        default=3,
        help="extra rounds of 3,000 requests at the top concurrency, to "
        "tell a leak from allocator growth (RSS printed after each)",
    )
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (DND_WORKERS)")
    ap.add_argument("--v2", action="store_true", help="only OIP v2 JSON against binary tensors, 64 images a request")
    ap.add_argument("--reloads", type=int, default=50, help="POST /admin/reload this many times (resident memory)")
    ap.add_argument(
        "--raw-only",
        choices=["tuned", "default"],
        help="no server: only the raw batched throughput, "
        "with detector.runtime.tune_malloc (as dnd serve) or with glibc's default malloc (one process can "
        "not undo the tuning, so compare runs of each)",
    )
    a = ap.parse_args()
    files = sorted(Path(a.data, "test").glob("*/*.jpg"))[::20][:500]
    if not files:
        sys.exit(f"no test JPEGs under {a.data}/test/<class>/: run `make data` first")
    images = [f.read_bytes() for f in files]
    if a.raw_only:
        for threads in sorted({1, a.threads or len(os.sched_getaffinity(0))}):
            raw = [raw_throughput(a.model, images, threads, malloc=a.raw_only == "tuned") for _ in range(3)]
            print(
                f"raw batched det.predict throughput (batch 64, {threads} threads, malloc {a.raw_only}): "
                f"{', '.join(f'{r:.0f}' for r in raw)} img/s"
            )
        return
    port = free_port()
    env = {
        **os.environ,
        "DND_MODEL_DIR": a.model,
        "DND_MAX_WAIT_MS": str(a.max_wait_ms),
        "DND_WORKERS": str(a.workers),
        "DND_API_KEY": "bench",
    }
    env |= {
        k: str(v) for k, v in {"DND_THREADS": a.threads, "DND_PARALLEL_MIN_BATCH": a.parallel_min_batch}.items() if v
    }
    cores = len(os.sched_getaffinity(0))
    server = subprocess.Popen(
        [sys.executable, "-m", "dnd", "serve", "--port", str(port), "--log-level", "warning"], env=env
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            sys.exit("server did not become ready")
        if a.v2:
            v2_compare(base, images)
            return
        # warm-up at every concurrency, so that every batch shape has been allocated before the memory baseline
        for conc in map(int, a.concurrency.split(",")):
            asyncio.run(load(f"{base}/predict", images, 4 * conc, conc))
        rss = [rss_mib(server.pid)]
        print(
            f"server RSS after warm-up: {rss[0]:.0f} MiB; {a.workers} worker(s); torch threads {a.threads or cores} "
            f"for batches >= {a.parallel_min_batch or 'default'} images, else 1; max wait {a.max_wait_ms} ms"
        )
        print(
            f"{'conc':>5} {'requests':>8} {'errors':>6} {'img/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
            f"{'RSS MiB':>8}"
        )
        results = {}
        for conc, n in zip(map(int, a.concurrency.split(",")), map(int, a.requests.split(","))):
            lat, errors, wall = asyncio.run(load(f"{base}/predict", images, n, conc))
            q = np.percentile(np.array(lat) * 1e3, [50, 95, 99])
            rss.append(rss_mib(server.pid))
            results[conc] = n / wall
            print(
                f"{conc:>5} {n:>8} {errors:>6} {n / wall:>7.0f} {q[0]:>7.1f} {q[1]:>7.1f} {q[2]:>7.1f} {rss[-1]:>8.0f}"
            )
        top = max(results)
        for r in range(a.soak):
            _, errors, wall = asyncio.run(load(f"{base}/predict", images, 3000, top))
            rss.append(rss_mib(server.pid))
            print(
                f"soak {r + 1}/{a.soak}: 3000 requests at concurrency {top}, {errors} errors, {3000 / wall:.0f} img/s, "
                f"RSS {rss[-1]:.0f} MiB"
            )
        lat, took = asyncio.run(healthz_during(base, maximal_request()))
        q = np.percentile(np.array(lat) * 1e3, [50, 99])
        print(
            f"/healthz during a maximal request (64 PNGs of 4096 x 4096, {took:.1f} s): {len(lat)} probes, p50 "
            f"{q[0]:.1f} ms, p99 {q[1]:.1f} ms, max {max(lat) * 1e3:.1f} ms (target p99 <= 50 ms)"
        )
        if a.reloads and a.workers == 1:
            before = rss_mib(server.pid)
            for _ in range(a.reloads):
                httpx.post(f"{base}/admin/reload", headers={"x-api-key": "bench"}, timeout=60).raise_for_status()
            print(
                f"{a.reloads} reloads: RSS {before:.0f} -> {rss_mib(server.pid):.0f} MiB (target: flat within 20 MiB)"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    for threads in sorted({1, a.threads or cores, cores}):
        raw = raw_throughput(a.model, images, threads)
        print(
            f"raw batched det.predict throughput (batch 64, {threads} threads, server stopped): {raw:.0f} img/s; "
            f"service/raw at concurrency {top}: {results[top] / raw:.2f} (target >= 0.60)"
        )
    print(f"server RSS: {' -> '.join(f'{r:.0f}' for r in rss)} MiB (growth {rss[-1] - rss[0]:+.0f} MiB)")


if __name__ == "__main__":
    main()
