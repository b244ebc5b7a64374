"""Dynamic batching of concurrent predictions: requests that arrive within a short window go through the model as one
batch (up to a maximum size), so throughput grows with load while a lone request waits at most the window.

One worker thread per model owns the model's forward pass; callers hand it one uint8 image (already resized/cropped
to the model's input) and get a future of that image's output row. ``max_batch=1`` is one request at a time.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ImgclassError, UsageError

__all__ = ["DynamicBatcher", "BatcherClosed", "BatchStats"]

_STOP = object()


class BatcherClosed(ImgclassError):
    """The batcher was shut down before the request could run."""


@dataclass
class BatchStats:
    """What the batcher did so far: batches run, images predicted, the largest batch, a histogram of batch sizes."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    sizes: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"batches": self.batches, "items": self.items, "largest": self.largest,
                "mean_batch": self.items / self.batches if self.batches else 0.0,
                "sizes": dict(sorted(self.sizes.items()))}


class DynamicBatcher:
    """Collects single images into batches for ``fn`` (uint8 ``(B, C, H, W)`` -> ``(B, ...)`` tensor).

    The worker takes the first waiting image, then whatever else is queued or arrives within ``window_ms`` of it, up
    to ``max_batch`` images, and runs ``fn`` once on the stack; it stops waiting early when nothing arrived for
    ``idle_ms`` (the requests that were coming are in). Row ``i`` of the
    output goes to the ``i``-th caller. An exception in ``fn`` goes to every caller of that batch; the worker
    keeps serving.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, max_batch: int = 32, window_ms: float = 5.0,
                 idle_ms: float = 1.0, name: str = "model"):
        if int(max_batch) < 1:
            raise UsageError(f"max_batch must be >= 1, got {max_batch}")
        if float(window_ms) < 0:
            raise UsageError(f"window_ms must be >= 0, got {window_ms}")
        self.fn = fn
        self.max_batch = int(max_batch)
        self.window = float(window_ms) / 1000.0
        self.idle = max(0.0, float(idle_ms)) / 1000.0
        self.name = name
        self.stats = BatchStats()
        self._q: queue.Queue = queue.Queue()
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"imgclass-batcher-{name}", daemon=True)
        self._thread.start()

    # -- callers -----------------------------------------------------------------------------------------------------
    def submit(self, image: torch.Tensor) -> Future:
        """Queue one image (``(C, H, W)``); a future of its output row."""
        fut: Future = Future()
        with self._lock:
            if self._closed:
                fut.set_exception(BatcherClosed(f"{self.name}: the server is shutting down"))
                return fut
            self._q.put((image, fut))
        return fut

    async def predict(self, image: torch.Tensor) -> torch.Tensor:
        """``submit`` for asyncio callers."""
        return await asyncio.wrap_future(self.submit(image))

    def __call__(self, image: torch.Tensor, timeout: float | None = None) -> torch.Tensor:
        """Blocking ``submit``: the output row of one image."""
        return self.submit(image).result(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._q.put(_STOP)
        self._thread.join(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the worker --------------------------------------------------------------------------------------------------
    def _collect(self, first) -> tuple[list, bool]:
        items, stop = [first], False
        deadline = time.monotonic() + self.window
        while len(items) < self.max_batch:
            try:  # already waiting: take it without waiting
                it = self._q.get_nowait()
            except queue.Empty:
                # wait for more until the window closes, but not longer than `idle` after the last arrival: once the
                # callers that were coming have come, the batch runs instead of sitting out the window
                left = min(deadline - time.monotonic(), self.idle)
                if left <= 0:
                    break
                try:
                    it = self._q.get(timeout=left)
                except queue.Empty:
                    break
            if it is _STOP:
                stop = True
                break
            items.append(it)
        return items, stop

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._q.get()
            if first is _STOP:
                break
            items, stop = self._collect(first)
            # one shape per forward pass (every image of one model has the model's input size; this is a guard)
            groups: dict[tuple, list] = {}
            for img, fut in items:
                groups.setdefault(tuple(img.shape), []).append((img, fut))
            for group in groups.values():
                self._run([g[0] for g in group], [g[1] for g in group])
        while True:  # anything queued after the stop marker is refused, not left hanging
            try:
                it = self._q.get_nowait()
            except queue.Empty:
                break
            if it is not _STOP:
                it[1].set_exception(BatcherClosed(f"{self.name}: the server is shutting down"))

    def _run(self, images: list[torch.Tensor], futures: list[Future]) -> None:
        live = [(img, f) for img, f in zip(images, futures) if f.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            out = self.fn(torch.stack([img for img, _ in live]))
        except BaseException as e:  # noqa: BLE001 - every caller of this batch gets the error; the worker goes on
            for _, f in live:
                f.set_exception(e)
            return
        n = len(live)
        self.stats.batches += 1
        self.stats.items += n
        self.stats.largest = max(self.stats.largest, n)
        self.stats.sizes[n] = self.stats.sizes.get(n, 0) + 1
        for i, (_, f) in enumerate(live):
            f.set_result(out[i])
