"""Micro-batching: concurrent requests are queued and run as one forward pass, off the event loop.

The worker takes whatever is queued (up to max_batch images, waiting at most max_wait for more), concatenates it,
runs `Detector.predict` in a single inference thread and hands each request its slice. The torch thread count is
set per batch by `threads_for(batch size)`: one thread for the small batches of light load keeps a core free for
HTTP (latency), all of them for the large batches of heavy load (throughput). The detector is read
once per batch, so `swap()` (admin reload) takes effect between batches and no request is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from detector.api import Detector, Prediction


class MicroBatcher:
    def __init__(
        self,
        detector: Detector,
        max_batch: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        threads_for: Callable[[int], int] | None = None,
    ) -> None:
        self.detector, self.max_batch, self.max_wait_s = detector, max_batch, max_wait_s
        self.on_batch, self.threads_for = on_batch, threads_for
        self._queue: asyncio.Queue[tuple[Tensor, asyncio.Future]] = asyncio.Queue()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)

    def swap(self, detector: Detector) -> None:
        self.detector = detector

    async def submit(self, x: Tensor) -> tuple[Prediction, Detector]:
        """x (n, 3, S, S) -> its Prediction and the detector that made it (for threshold/model in responses)."""
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, fut))
        return await fut

    def _predict(self, det: Detector, x: Tensor) -> Prediction:
        """Runs in the inference thread. The thread count is set here, not in the event loop: OpenMP keeps it per
        calling thread."""
        if self.threads_for is not None:
            n = self.threads_for(len(x))
            if torch.get_num_threads() != n:
                torch.set_num_threads(n)
        return det.predict(x)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            n = len(items[0][0])
            deadline = loop.time() + self.max_wait_s
            while n < self.max_batch:
                try:
                    timeout = deadline - loop.time()
                    item = (
                        self._queue.get_nowait() if timeout <= 0 else await asyncio.wait_for(self._queue.get(), timeout)
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                items.append(item)
                n += len(item[0])
            det = self.detector
            try:
                pred = await loop.run_in_executor(self._pool, self._predict, det, torch.cat([x for x, _ in items]))
            except Exception as e:
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if self.on_batch:
                self.on_batch(n)
            start = 0
            for x, fut in items:
                sl = slice(start, start + len(x))
                start += len(x)
                if not fut.done():  # the client may have gone away
                    fut.set_result((pred[sl], det))
