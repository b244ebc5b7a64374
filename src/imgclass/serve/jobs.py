"""Long requests (attacks, explanations) as jobs: run on a worker thread, with progress (forward passes done),
a time limit and cancellation (checked at every forward pass of the model they use)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ImgclassError

__all__ = ["Job", "Jobs", "JobTimeout", "JobCancelled"]


class JobTimeout(ImgclassError):
    """The job ran past its time limit."""


class JobCancelled(ImgclassError):
    """The job was cancelled (the server is shutting down)."""


@dataclass
class Job:
    """One long request: its state, progress and, once finished, its result or error."""

    id: str
    kind: str
    model: str
    limit_s: float
    total: int | None = None  # expected forward passes, where the method says
    done: int = 0  # forward passes so far
    status: str = "queued"  # queued | running | done | error | timeout | cancelled
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    http_status: int = 200
    future: Future | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    _t0: float = 0.0  # monotonic start

    def tick(self) -> None:
        """One forward pass: count it, and stop the job when it is past its limit or cancelled."""
        self.done += 1
        if self._cancel.is_set():
            raise JobCancelled(f"{self.kind} cancelled: the server is shutting down")
        if self.started is not None and time.monotonic() - self._t0 > self.limit_s:
            raise JobTimeout(f"{self.kind} on {self.model} ran past the time limit of {self.limit_s:g} s "
                             f"(after {self.done} forward passes); try fewer steps or a cheaper method")

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started

    def progress(self) -> float | None:
        """Fraction done: forward passes against the expected count, else time against the limit (an upper bound)."""
        if self.status == "done":
            return 1.0
        if self.total:
            return min(0.99, self.done / self.total)
        e = self.elapsed
        return None if e is None else min(0.99, e / self.limit_s)

    def to_dict(self, *, with_result: bool = True) -> dict:
        d = {"id": self.id, "kind": self.kind, "model": self.model, "status": self.status,
             "forward_passes": self.done, "expected_forward_passes": self.total, "progress": self.progress(),
             "elapsed_s": self.elapsed, "time_limit_s": self.limit_s, "error": self.error}
        if with_result and self.status == "done":
            d["result"] = self.result
        return d


class Jobs:
    """A worker pool for jobs (``workers`` at a time), the recent jobs by id, and shutdown that cancels them."""

    def __init__(self, *, workers: int = 1, keep: int = 64):  # results hold images: keep the recent ones only
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(workers)), thread_name_prefix="imgclass-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count(1)

    def submit(self, kind: str, model: str, fn: Callable[[Job], Any], *, limit_s: float,
               total: int | None = None) -> Job:
        """Run ``fn(job)`` on a worker; ``fn`` calls ``job.tick()`` at every forward pass (see ``watch``)."""
        job = Job(id=f"{next(self._ids)}-{uuid.uuid4().hex[:8]}", kind=kind, model=model, limit_s=float(limit_s),
                  total=total)
        with self._lock:
            if self._closed:
                job.status, job.error, job.http_status = "cancelled", "the server is shutting down", 503
                return job
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                self._jobs.popitem(last=False)
        job.future = self._pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[Job], Any]) -> Any:
        job.status, job.started, job._t0 = "running", time.time(), time.monotonic()
        try:
            if job._cancel.is_set():
                raise JobCancelled(f"{job.kind} cancelled: the server is shutting down")
            job.result = fn(job)
            job.status = "done"
        except JobTimeout as e:
            job.status, job.error, job.http_status = "timeout", str(e), 504
        except JobCancelled as e:
            job.status, job.error, job.http_status = "cancelled", str(e), 503
        except ImgclassError as e:  # a wrong request (unknown class, bad parameter ...)
            job.status, job.error, job.http_status = "error", str(e), 400
        except Exception as e:  # noqa: BLE001 - reported to the client, the server goes on
            job.status, job.error, job.http_status = "error", f"{type(e).__name__}: {e}", 500
        finally:
            job.finished = time.time()
        return job.result

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def shutdown(self, *, wait: bool = True) -> None:
        """Refuse new jobs, cancel the queued and running ones (they stop at their next forward pass)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for j in jobs:
            j.cancel()
        self._pool.shutdown(wait=wait, cancel_futures=True)
