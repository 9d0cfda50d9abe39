"""Process-wide runtime settings: `tune_malloc()` (allocator, once at the start of a process) and `check_device()`.

Why: a CPU forward pass allocates and frees tensors of 0.1-16 MB every batch. glibc serves blocks above its mmap
threshold (128 KiB at start, then raised dynamically as such blocks are freed) with mmap and gives them back with
munmap, and trims the heap top back to the kernel, so each batch can fault its pages in afresh. Where a process's
threshold ends up depends on its allocation history. Measured side by side (README "Benchmarks"): plain
classification of a batch of 256 took 181-210 ms per batch with glibc's defaults and 151-166 ms with fixed thresholds
(`bench/scoring.py --default-malloc` vs without), and raw batched `det.predict` at batch 64 ran at 994-1,157 vs
1,431-1,497 img/s on 2 threads (`bench/serve.py --raw-only`). Fixing both thresholds keeps freed blocks in the heap.
The cost is resident memory: up to `trim_threshold` of freed heap stays mapped.
Training steps were not affected (same step time either way), so the trainer does not need it.

Not done at import (importing the package does no work): entry points call it (`dnd`, the service, the benches).
Only glibc has these knobs; elsewhere, or when the user set MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the
environment (glibc's own way, which then wins), it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h> parameter numbers
MMAP_THRESHOLD = 32 * 2**20  # the ceiling of glibc's own dynamic threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 256 * 2**20


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fix glibc's mmap and trim thresholds (bytes) for this process. True if both were applied."""
    if (
        not sys.platform.startswith("linux")
        or "MALLOC_MMAP_THRESHOLD_" in os.environ
        or "MALLOC_TRIM_THRESHOLD_" in os.environ
    ):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc returns 1 on success, 0 for a value out of range; musl's stub returns 0 for everything
    return mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1


def check_device(name: str | torch.device, what: str = "device") -> torch.device:
    """`name` as a torch.device this machine can run on, else ValueError naming `what`, the accepted forms and what
    was found (torch's own errors for "foo" or an absent GPU are tracebacks listing every backend it knows)."""
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{what} {str(name)!r}: expected cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} {str(name)!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} {name}: CUDA is not available here (torch.cuda.is_available() is False); use cpu")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 convolutions natively: a CUDA GPU, or a CPU with AVX512-BF16 / AMX that oneDNN
    uses. Elsewhere bfloat16 is emulated and slower than float32 (profiles built with `--transform-precision
    bfloat16` then serve slower than float32 ones would)."""
    import torch

    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # torch's own check, used by its CPU autocast tests
    except (AttributeError, RuntimeError):
        return False
