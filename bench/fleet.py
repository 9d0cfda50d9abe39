"""The compose fleet under load with replicas killed mid-run: every request must still be answered.

Sends --requests POST /predict (real CIFAR-10 test JPEGs, or the page's sample PNGs without --data) through the
balancer at --concurrency, and when a third of them are answered, crashes --kill replicas of the compose project's
detector service: SIGKILL to each container's process from the host, as an out-of-memory kill or a fault would end
it (in-flight requests die with it; nginx retries them on another replica). The restart policy then brings the
replica back and nginx, re-resolving the service's name, sends it traffic again. (`docker kill` would count as an
operator's stop, which the restart policy `unless-stopped` respects: --kill-mode stop.) Reports errors (anything but
a 200 with predictions), throughput before and after the crash, latency percentiles, and when each replica was
healthy again. Exit status 1 on any error. `make docker-test` runs it;
by hand, with a fleet up:

    python bench/fleet.py --url http://127.0.0.1:8080 --project dnd-test --requests 10000 --kill 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replicas(project: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}",
         "--filter", "label=com.docker.compose.service=detector"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def inspect(container: str, fmt: str) -> str:
    r = subprocess.run(["docker", "inspect", "-f", fmt, container], capture_output=True, text=True, check=True)
    return r.stdout.strip()


def images(data: Path | None) -> list[tuple[bytes, str]]:
    if data is not None:
        files = sorted(data.glob("test/*/*.jpg"))[::20][:500]
        if files:
            return [(f.read_bytes(), "image/jpeg") for f in files]
    return [(f.read_bytes(), "image/png") for f in sorted((ROOT / "dnd/service/static/samples").glob("*.png"))]


async def run(a: argparse.Namespace) -> int:
    import aiohttp

    pool = images(a.data)
    victims = replicas(a.project)[: a.kill]
    if len(victims) < a.kill:
        sys.exit(f"project {a.project} runs {len(replicas(a.project))} detector replicas, fewer than --kill {a.kill}")
    kill_at = a.requests // 3
    done: list[tuple[float, float, bool]] = []  # (answered at, latency, ok)
    outcomes: Counter[str] = Counter()
    killed_at: float | None = None
    pending, back = set(victims), {}  # replicas not yet healthy again; seconds until each was
    counter = iter(range(a.requests))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=a.concurrency), timeout=timeout) as client:

        async def kill() -> None:
            nonlocal killed_at
            killed_at = time.perf_counter()
            if a.kill_mode == "stop":
                await asyncio.to_thread(subprocess.run, ["docker", "kill", *victims], capture_output=True, check=True)
            else:
                for v in victims:
                    os.kill(int(await asyncio.to_thread(inspect, v, "{{.State.Pid}}")), signal.SIGKILL)
            print(f"killed {len(victims)} replica(s) after {len(done)} answers: {' '.join(v[:12] for v in victims)}")
            while a.kill_mode == "crash" and pending:  # the restart policy's restart, then the health check
                await asyncio.sleep(0.5)
                for v in list(pending):
                    fmt = "{{.RestartCount}} {{.State.Health.Status}}"
                    restarts, health = (await asyncio.to_thread(inspect, v, fmt)).split()
                    if int(restarts) > 0 and health == "healthy":
                        back[v] = time.perf_counter() - killed_at
                        pending.discard(v)

        async def worker() -> None:
            for i in counter:
                body, kind = pool[i % len(pool)]
                t0 = time.perf_counter()
                try:
                    async with client.post(f"{a.url}/predict", data=body, headers={"content-type": kind}) as r:
                        text = await r.read()
                        ok = r.status == 200 and b'"predictions"' in text
                        outcomes[str(r.status)] += 1
                except (TimeoutError, aiohttp.ClientError) as e:
                    ok = False
                    outcomes[type(e).__name__] += 1
                t1 = time.perf_counter()
                done.append((t1, t1 - t0, ok))
                if len(done) == kill_at and a.kill:
                    tasks.append(asyncio.get_running_loop().create_task(kill()))

        tasks: list[asyncio.Task[None]] = []
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        wall = time.perf_counter() - t0
        if tasks:  # a crashed replica may still be restarting: wait for its health check, bounded
            await asyncio.wait(tasks, timeout=120)
    errors = sum(not ok for *_, ok in done)
    lat = sorted(d[1] for d in done)
    pct = {p: lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e3 for p in (50, 99)}
    print(f"{len(done)} requests in {wall:.1f} s ({len(done) / wall:.0f} req/s), concurrency {a.concurrency}")
    print(f"answers: {dict(outcomes)}; errors: {errors}")
    print(f"latency p50 {pct[50]:.1f} ms, p99 {pct[99]:.1f} ms, max {lat[-1] * 1e3:.0f} ms")
    if killed_at is not None:
        before = [d for d in done if d[0] < killed_at]
        after = [d for d in done if d[0] >= killed_at]
        rate = [len(s) / (s[-1][0] - s[0][0]) if len(s) > 1 else 0.0 for s in (before, after)]
        slow = statistics.median(d[1] for d in after[:200]) * 1e3 if after else 0.0
        print(f"throughput before the kill {rate[0]:.0f} req/s, after {rate[1]:.0f} req/s; "
              f"median latency of the 200 answers after it {slow:.1f} ms")  # fmt: skip
        if a.kill_mode == "crash":
            for v in victims:
                said = f"healthy again {back[v]:.1f} s after the crash" if v in back else "not healthy again by the end"
                print(f"replica {v[:12]}: restarted by the restart policy, {said}")
    return 1 if errors else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="the balancer")
    ap.add_argument("--project", default="dnd-test", help="compose project whose detector replicas may be killed")
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kill", type=int, default=1, help="replicas to kill after a third of the requests (0: none)")
    ap.add_argument(
        "--kill-mode", choices=["crash", "stop"], default="crash", help="SIGKILL from the host, or docker kill"
    )
    ap.add_argument("--data", type=Path, default=ROOT / ".data", help="image-folder root with test/<class>/*.jpg")
    sys.exit(asyncio.run(run(ap.parse_args())))


if __name__ == "__main__":
    main()
