"""The CPU kernels' switch and work splitting: whether numba kernels run, and how their work is cut.

Each corruption family keeps its numba kernels beside its tensor code (``noise_kernels``, ``blur_kernels``,
``weather_kernels``, ``digital_kernels``; the random stream's in ``stream``). This module is the one place they
all consult:

- ``HAVE_NUMBA``: whether the kernels run. Every caller reads it at call time as ``kernels.HAVE_NUMBA``, so setting
  it to False (a test's ``monkeypatch.setattr(kernels, "HAVE_NUMBA", False)``) sends every corruption, the
  random stream and the filters down the tensor path at once; it is False when numba is missing.
- ``run_split``: a kernel's work split by position over torch's intra-op threads (the kernels release the GIL), in
  parts of at least ``_PART_NS`` nanoseconds of work (``part_units``), so the result never depends on the number of
  threads; ``pool`` is the process-wide thread pool it hands parts to.

A kernel is compiled (or loaded from numba's on-disk cache) on its first call, so a run compiles only the kernels
of the corruptions it uses.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch

try:  # numba is a dependency; without it (or with NUMBA_DISABLE_JIT) the tensor path runs on the CPU too
    import numba  # noqa: F401

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    HAVE_NUMBA = False

__all__ = ["HAVE_NUMBA", "pool", "run_split", "part_units", "flat_view"]


# handing a part to a pool thread and getting it back costs 0.1-0.25 ms on a small VM: parts are sized to take
# at least about 0.3 ms (min_part, from each kernel's rough cost per unit)
_PART_NS = 300_000


def part_units(unit_ns: float) -> int:
    """The fewest units of work (of ``unit_ns`` each) worth a part of their own."""
    return max(1, int(_PART_NS / max(unit_ns, 1e-3)))


_POOL: dict[int, ThreadPoolExecutor] = {}  # by number of workers


def pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool for kernels and per-image codec calls in threads (they release the GIL)."""
    if workers not in _POOL:
        _POOL[workers] = ThreadPoolExecutor(workers, thread_name_prefix="imgclass-corrupt")
    return _POOL[workers]


def run_split(fn: Callable[..., None], total: int, *args, align: int = 2, min_part: int | None = None) -> None:
    """Call ``fn(lo, hi, *args)`` over [0, total) in as many parts as torch has threads, the first in the calling
    thread, the others in the thread pool (the kernels release the GIL); parts start at multiples of ``align``."""
    min_part = part_units(3.0) if min_part is None else min_part  # default: units of ~3 ns (a value of a noise)
    parts = max(1, min(torch.get_num_threads(), total // max(1, min_part)))
    if threading.current_thread().name.startswith("imgclass-corrupt"):
        parts = 1  # already in a pool thread: waiting on the pool from inside it could deadlock
    if parts == 1:
        fn(0, total, *args)
        return
    step = -(-total // parts)
    step += (-step) % align
    bounds = [(lo, min(lo + step, total)) for lo in range(0, total, step)]
    futures = [pool(parts - 1).submit(fn, lo, hi, *args) for lo, hi in bounds[1:]]
    fn(*bounds[0], *args)  # the first part in the calling thread: one hand-off fewer
    for f in futures:
        f.result()


def flat_view(x: torch.Tensor) -> np.ndarray:
    """A flat numpy view of the contiguous batch."""
    return x.contiguous().numpy().reshape(-1)
