"""The micro-batcher: thread count per batch size."""

from pathlib import Path

import torch

from detector import load_detector


def test_threads_follow_batch_size(bundle: Path) -> None:
    """Small batches run on one torch thread, large ones on `threads` (set in the inference thread itself)."""
    import asyncio

    from dnd.service.batcher import MicroBatcher

    det = load_detector(bundle)
    seen: list[tuple[int, int]] = []
    predict = det.predict
    det.predict = lambda x: (seen.append((len(x), torch.get_num_threads())), predict(x))[1]  # type: ignore[method-assign]

    async def run() -> None:
        b = MicroBatcher(det, max_batch=64, max_wait_s=0.0, threads_for=lambda n: 2 if n >= 4 else 1)
        b.start()
        await b.submit(torch.rand(1, 3, 32, 32))
        await b.submit(torch.rand(8, 3, 32, 32))
        await b.submit(torch.rand(2, 3, 32, 32))
        await b.stop()

    before = torch.get_num_threads()
    asyncio.run(run())
    assert seen == [(1, 1), (8, 2), (2, 1)]
    assert torch.get_num_threads() == before  # the caller's own setting is untouched
