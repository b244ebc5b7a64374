"""The runs the server shows: a run store (``--store URL``, default the toolkit's store), or the results.json files
found under a folder (``--runs DIR``, indexed into a private temporary store). Files are served only by run id, from
the folder of a registered run's results.json."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from ..errors import ImgclassError

__all__ = ["RunSource", "NoSuchRun"]


class NoSuchRun(ImgclassError):
    """No registered run has that id (or it has no such file)."""


class RunSource:
    """Runs from a store or a folder scan: ``list``, ``get``, ``leaderboard``, ``compare`` and the files of a run."""

    def __init__(self, *, store_url: str | None = None, runs_dir: str | None = None):
        from ..store import open_store

        self._tmp: tempfile.TemporaryDirectory | None = None
        self.skipped: list[tuple[str, str]] = []
        self.error: str | None = None
        self.store = None
        self._lock = threading.Lock()
        try:
            if runs_dir is not None:
                root = Path(runs_dir).expanduser()
                if not root.is_dir():
                    raise ImgclassError(f"--runs {runs_dir}: not a folder")
                self._tmp = tempfile.TemporaryDirectory(prefix="imgclass-serve-runs-")
                self.store = open_store(f"sqlite:///{Path(self._tmp.name) / 'runs.db'}")
                _, self.skipped = self.store.import_paths([root], progress=False)
                self.where = f"results.json files under {root.resolve()}"
            else:
                self.store = open_store(store_url)
                self.where = f"run store {self.store.url}"
        except ImgclassError as e:
            if runs_dir is not None:
                raise
            self.error, self.where = str(e), f"run store {store_url or '(default)'}"

    # -- records -----------------------------------------------------------------------------------------------------
    def list(self, **filters) -> list:
        if self.store is None:
            return []
        return self.store.list(**{k: v for k, v in filters.items() if v not in (None, "")})

    def get(self, run_id: int | str):
        """The record of a run, or :class:`NoSuchRun` (also for an id that is not a number)."""
        if self.store is None or not str(run_id).isdigit():
            raise NoSuchRun(f"no run {run_id}")
        try:
            return self.store.get(int(run_id))
        except ImgclassError:
            raise NoSuchRun(f"no run {run_id}") from None

    def leaderboard(self, *, data: str | None, columns: list[str]):
        from ..compare.leaderboard import leaderboard

        return leaderboard(self.store, data=data or None, columns=columns)

    def compare(self, ids: list[int]):
        from ..compare.runs import RunRef, compare
        from ..results import load

        refs = []
        for i in ids:
            rec = self.get(i)
            if not rec.results_path:
                raise NoSuchRun(f"run {i} has no results file")
            refs.append(RunRef(f"run {i}", load(rec.results_path), Path(rec.results_path), int(i)))
        return compare(refs)

    # -- files -------------------------------------------------------------------------------------------------------
    def folder(self, run_id: int | str) -> Path:
        rec = self.get(run_id)
        if not rec.results_path:
            raise NoSuchRun(f"run {run_id} has no files")
        return Path(rec.results_path).resolve().parent

    def report(self, run_id: int | str) -> Path:
        rec = self.get(run_id)
        p = Path(rec.report_path) if rec.report_path else None
        if p is None or not p.is_file():
            raise NoSuchRun(f"run {run_id} has no report.html")
        return p

    def file(self, run_id: int | str, rel: str) -> Path:
        """A file inside the run's folder, by its relative path; anything that leaves the folder (``..``, an absolute
        path, a link pointing out) is :class:`NoSuchRun`."""
        folder = self.folder(run_id)
        if not rel or rel.startswith(("/", "\\")) or "\x00" in rel:
            raise NoSuchRun(f"run {run_id} has no file {rel!r}")
        p = (folder / rel).resolve()
        if not p.is_relative_to(folder) or not p.is_file():
            raise NoSuchRun(f"run {run_id} has no file {rel!r}")
        return p

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self._tmp is not None:
            self._tmp.cleanup()
