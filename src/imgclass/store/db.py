"""The run store itself: record, read, filter, remove and import runs over one SQLAlchemy engine (Core, no ORM)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Self

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ..errors import ImgclassError
from .records import RunRecord, created_key, record_from_results
from .schema import METRICS, RUNS, migrate, read_transaction, redact, write_transaction

__all__ = ["DuplicateRunError", "Store", "connect"]

_RUN_FIELDS = [f for f in RunRecord.__dataclass_fields__ if f not in ("id", "headline")]
IMPORT_CHUNK = 200  # results files per transaction in import_paths
_CHUNK = 500  # ids per IN (...) (SQLite's variable limit is far above; PostgreSQL's plans stay simple)


class DuplicateRunError(ImgclassError):
    """The results file is already indexed (same sha256): ``run_id`` is the run that holds it."""

    def __init__(self, message: str, run_id: int):
        super().__init__(message)
        self.run_id = run_id


class Store:
    """A run store (SQLite file or PostgreSQL database). Every write is one transaction; use :func:`open_store`."""

    def __init__(self, engine: sa.Engine, *, url: str):
        self._engine = engine
        self.url = url  # for display: password redacted

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing --------------------------------------------------------------------------------------------------

    def record(self, run: RunRecord) -> int:
        """Add a run and its headline metrics in one transaction; the new run's id."""
        try:
            return self.record_many([run])[0]
        except sa_exc.IntegrityError:
            existing = self.find_results(run.results_sha256) if run.results_sha256 else None
            if existing is None:
                raise
            raise DuplicateRunError(f"{run.results_path or 'these results'} are already in the store as run "
                                    f"{existing}", existing) from None

    def record_many(self, runs: Sequence[RunRecord]) -> list[int]:
        """Add runs and their metrics in one transaction (all or none); their new ids, in order."""
        rows = []
        for run in runs:
            row = {k: getattr(run, k) for k in _RUN_FIELDS}
            row["probes"] = list(run.probes)
            row["created_key"] = created_key(run.created)
            row["probe_index"] = "," + ",".join(p.lower() for p in run.probes) + ","
            rows.append((row, [{"name": k, "value": None if v is None else float(v)} for k, v in run.headline.items()]))

        def insert(conn: sa.Connection) -> list[int]:
            ids, metrics = [], []
            for row, ms in rows:
                run_id = int(conn.execute(RUNS.insert(), row).inserted_primary_key[0])
                ids.append(run_id)
                metrics += [{"run_id": run_id, **m} for m in ms]
            if metrics:
                conn.execute(METRICS.insert(), metrics)
            return ids

        return write_transaction(self._engine, insert) if rows else []

    def find_many(self, digests: Sequence[str]) -> dict[str, int]:
        """``results_sha256 -> run id`` of the digests already in the store."""
        if not digests:
            return {}
        q = sa.select(RUNS.c.results_sha256, RUNS.c.id).where(RUNS.c.results_sha256.in_(list(digests)))
        return dict(read_transaction(self._engine, lambda conn: conn.execute(q).all()))

    def remove(self, run_id: int) -> None:
        """Delete a run and (by cascade) its metrics."""
        def delete(conn: sa.Connection) -> int:
            return conn.execute(RUNS.delete().where(RUNS.c.id == run_id)).rowcount

        if not write_transaction(self._engine, delete):
            raise self._no_run(run_id)

    def import_paths(self, paths: Iterable[str | os.PathLike], *, progress: bool = True,
                     on_record: Callable[[int, str], None] | None = None,
                     ) -> tuple[list[int], list[tuple[str, str]]]:
        """Index results.json files (each path a file, or a folder searched recursively for results.json).

        Returns the new run ids and ``(path, reason)`` for every file skipped: unreadable, invalid, or already
        in the store. ``on_record(run_id, path)`` is called after each file is recorded."""
        from tqdm.auto import tqdm

        from ..results import load_bytes

        files: list[Path] = []
        skipped: list[tuple[str, str]] = []
        for given in paths:
            p = Path(given).expanduser()
            if p.is_dir():
                found = sorted(p.rglob("results.json"))
                files += [f for f in found if f.is_file()]
                if not found:
                    skipped.append((str(p), "no results.json in this folder"))
            elif p.is_file():
                files.append(p)
            else:
                skipped.append((str(p), "no such file or folder"))
        ids: list[int] = []
        bar = tqdm(total=len(files), desc="import", unit="file", disable=not progress or not files, leave=False,
                   dynamic_ncols=True)
        for start in range(0, len(files), IMPORT_CHUNK):  # one query and one transaction per chunk, not per file
            chunk = files[start:start + IMPORT_CHUNK]
            texts: dict[Path, tuple[str, bytes]] = {}
            for f in chunk:
                try:
                    data = f.read_bytes()
                except OSError as e:
                    skipped.append((str(f), f"unreadable ({e.strerror or e})"))
                    continue
                texts[f] = (hashlib.sha256(data).hexdigest(), data)
            known = self.find_many([d for d, _ in texts.values()])
            pending: list[tuple[Path, RunRecord]] = []
            for f, (digest, data) in texts.items():
                if digest in known:
                    skipped.append((str(f), f"already in the store as run {known[digest]}"))
                    continue
                try:
                    run = record_from_results(load_bytes(data, source=str(f)), f)
                except ImgclassError as e:
                    skipped.append((str(f), _strip_source(str(e), f)))
                    continue
                run.results_sha256 = digest  # the bytes we checked, even if the file changed since
                known[digest] = -1  # the same file twice in one import
                pending.append((f, run))
            try:
                new = self.record_many([r for _, r in pending])
            except sa_exc.IntegrityError:  # another process indexed some of them meanwhile: one at a time
                new = []
                for f, r in list(pending):
                    try:
                        new.append(self.record(r))
                    except DuplicateRunError as e:
                        skipped.append((str(f), f"already in the store as run {e.run_id}"))
                        pending.remove((f, r))
            for (f, _), run_id in zip(pending, new):
                ids.append(run_id)
                if on_record is not None:
                    on_record(run_id, str(f))
            bar.update(len(chunk))
        bar.close()
        return ids, skipped

    # -- reading --------------------------------------------------------------------------------------------------

    def get(self, run_id: int) -> RunRecord:
        """One run by id."""
        def read(conn: sa.Connection) -> list[RunRecord]:
            return self._records(conn, conn.execute(sa.select(RUNS).where(RUNS.c.id == run_id)).mappings().all())

        found = read_transaction(self._engine, read)
        if not found:
            raise self._no_run(run_id)
        return found[0]

    def list(self, *, kind: str | None = None, model: str | None = None, data: str | None = None,
             probe: str | None = None, limit: int | None = None) -> list[RunRecord]:
        """Runs, newest first. ``model``/``data``: case-insensitive substrings of the spec (model: also of its
        group and label); ``probe``: runs that ran that probe."""
        q = sa.select(RUNS).where(*_filters(kind=kind, model=model, data=data, probe=probe))
        q = q.order_by(RUNS.c.created_key.desc(), RUNS.c.id.desc())
        if limit is not None:
            q = q.limit(int(limit))

        def read(conn: sa.Connection) -> list[RunRecord]:
            return self._records(conn, conn.execute(q).mappings().all())

        return read_transaction(self._engine, read)

    def find_results(self, results_sha256: str) -> int | None:
        """The run that indexed the results file with this sha256, if any."""
        q = sa.select(RUNS.c.id).where(RUNS.c.results_sha256 == results_sha256).limit(1)
        return read_transaction(self._engine, lambda conn: conn.execute(q).scalar())

    def metric_rows(self, *, data: str | None, names: Sequence[str], kind: str | None = None) -> list[dict]:
        """For leaderboards: one dict per run that has any of the metrics ``names`` (``PROBE.METRIC``), newest first.

        Each holds the run's id, model (group, label, spec), seed, data spec, files sha256, created, results/report
        paths, the protocols of the probes those metrics belong to (shared between rows with equal protocols: read
        them, do not change them), and ``values`` {name: float or None} for the names the run has. ``data`` filters
        like :meth:`list`, ``kind`` too. Two queries on the runs and metrics tables, never the results files."""
        names = list(dict.fromkeys(names))
        if not names:
            return []
        where = [METRICS.c.name.in_(names), *_filters(data=data, kind=kind)]
        joined = METRICS.join(RUNS, RUNS.c.id == METRICS.c.run_id)
        values_q = (sa.select(METRICS.c.run_id, METRICS.c.name, METRICS.c.value).select_from(joined)
                    .where(*where).order_by(METRICS.c.id))
        run_cols = [RUNS.c.id, RUNS.c.model_group, RUNS.c.model_label, RUNS.c.model_spec, RUNS.c.seed,
                    RUNS.c.data_spec, RUNS.c.files_sha256, RUNS.c.created, RUNS.c.results_path, RUNS.c.report_path]
        # protocols as text: runs with the same protocols (the common case) are parsed once
        having = sa.select(METRICS.c.run_id).where(METRICS.c.name.in_(names)).distinct()
        runs_q = (sa.select(*run_cols, sa.cast(RUNS.c.protocols, sa.Text))
                  .where(RUNS.c.id.in_(having), *_filters(data=data, kind=kind))
                  .order_by(RUNS.c.created_key.desc(), RUNS.c.id.desc()))

        def read(conn: sa.Connection) -> tuple[list, list]:
            return conn.execute(runs_q).all(), conn.execute(values_q).all()

        runs, values = read_transaction(self._engine, read)
        by_run: dict[int, dict[str, float | None]] = {}
        for run_id, name, value in values:
            by_run.setdefault(run_id, {})[name] = value
        probes = list(dict.fromkeys(n.split(".", 1)[0] for n in names))
        keys = [c.name for c in run_cols]
        parsed: dict[str | None, dict] = {None: {}}
        rows = []
        for *cols, protocols_text in runs:
            protocols = parsed.get(protocols_text)
            if protocols is None:
                full = json.loads(protocols_text) or {}
                protocols = parsed[protocols_text] = {p: full[p] for p in probes if p in full}
            d = dict(zip(keys, cols))
            d["protocols"] = protocols
            d["values"] = by_run.get(d["id"], {})
            rows.append(d)
        return rows

    def close(self) -> None:
        """Release the store's connections."""
        self._engine.dispose()

    # -- helpers --------------------------------------------------------------------------------------------------

    def _no_run(self, run_id: int) -> ImgclassError:
        return ImgclassError(f"no run {run_id} in {self.url}")

    def _records(self, conn: sa.Connection, rows: Sequence[sa.RowMapping]) -> list[RunRecord]:
        headlines: dict[int, dict[str, float | None]] = {int(r["id"]): {} for r in rows}
        ids = list(headlines)
        for i in range(0, len(ids), _CHUNK):
            q = (sa.select(METRICS.c.run_id, METRICS.c.name, METRICS.c.value)
                 .where(METRICS.c.run_id.in_(ids[i:i + _CHUNK])).order_by(METRICS.c.id))
            for run_id, name, value in conn.execute(q):
                headlines[run_id][name] = value
        out = []
        for r in rows:
            fields = {k: r[k] for k in _RUN_FIELDS}
            out.append(RunRecord(id=int(r["id"]), headline=headlines[int(r["id"])], **fields))
        return out


def _filters(*, kind: str | None = None, model: str | None = None, data: str | None = None,
             probe: str | None = None) -> list:
    where = []
    if kind:
        where.append(RUNS.c.kind == kind)
    if model:
        m = model.lower()
        where.append(sa.or_(*(sa.func.lower(c).contains(m, autoescape=True)
                              for c in (RUNS.c.model_spec, RUNS.c.model_group, RUNS.c.model_label))))
    if data:
        where.append(sa.func.lower(RUNS.c.data_spec).contains(data.lower(), autoescape=True))
    if probe:
        where.append(RUNS.c.probe_index.contains(f",{probe.lower()},", autoescape=True))
    return where


def _strip_source(message: str, path: Path) -> str:
    """A results error without the file name in front (the skipped list names the file)."""
    for prefix in (f"{path}: ", f"{path.resolve()}: "):
        if message.startswith(prefix):
            return message[len(prefix):]
    return message


def connect(url: str, *, shown_url: str | None = None) -> Store:
    """Open (create or migrate) the store at a normalized URL; a store that cannot be reached is one error line."""
    from .schema import make_engine

    shown = shown_url or redact(url)
    engine = make_engine(url)
    database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        folder = Path(database).expanduser().absolute().parent
        if not folder.is_dir():
            engine.dispose()
            raise ImgclassError(f"cannot open run store {shown}: folder {folder} does not exist")
    try:
        migrate(engine, shown_url=shown)
    except sa_exc.DBAPIError as e:
        engine.dispose()
        raise ImgclassError(f"cannot open run store {shown}: {_reason(e)}") from None
    except BaseException:
        engine.dispose()
        raise
    return Store(engine, url=shown)


def _reason(e: sa_exc.DBAPIError) -> str:
    text = str(e.orig if e.orig is not None else e)
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e.orig).__name__
