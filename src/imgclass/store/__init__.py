"""The run store: every run's what, how and headline numbers in one database (SQLite file or PostgreSQL).

``open_store(url)`` creates or migrates the schema; :class:`Store` records runs (each write one transaction, safe
with concurrent writers), lists and filters them, imports existing results.json files, and answers the
leaderboard's query from its own tables without reading results files. Runs come from typed results
(:mod:`imgclass.results`) through :func:`record_from_results`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .db import DuplicateRunError, Store
from .records import RunRecord, record_from_results
from .schema import MIGRATIONS, SCHEMA_VERSION, normalize_url, redact

if TYPE_CHECKING:
    from ..results import Results

__all__ = [
    "DEFAULT_URL_ENV",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "DuplicateRunError",
    "RunRecord",
    "Store",
    "default_url",
    "open_store",
    "record_from_results",
    "record_results",
]

DEFAULT_URL_ENV = "IMGCLASS_STORE"
DEFAULT_FILE = "runs.db"


def default_url() -> str:
    """``$IMGCLASS_STORE``, else the SQLite file ``runs.db`` in the imgclass home folder (``$IMGCLASS_HOME``)."""
    env = os.environ.get(DEFAULT_URL_ENV)
    if env:
        return env
    from ..assets import home_dir

    return f"sqlite:///{home_dir().resolve() / DEFAULT_FILE}"


def open_store(url: str | None = None) -> Store:
    """Open the store at ``url`` (default: :func:`default_url`), creating or migrating its schema.

    ``url``: a SQLAlchemy URL (``sqlite:///PATH``, ``postgresql://USER@HOST/DB``) or a path to a SQLite file.
    A store that does not connect, or whose schema is newer than this imgclass knows, is an ``ImgclassError``."""
    from .db import connect

    if url is None and not os.environ.get(DEFAULT_URL_ENV):
        from ..assets import home_dir

        home_dir().mkdir(parents=True, exist_ok=True)  # the default file's folder; a given URL's must exist
    normalized = normalize_url(url or default_url())
    return connect(normalized, shown_url=redact(normalized))


def record_results(results: Results, results_path: str | os.PathLike | None, *, url: str | None = None) -> int:
    """Record one run in the store (default: :func:`default_url`) and close it; the new run's id.
    Call it on one process only (rank 0 under torchrun)."""
    with open_store(url) as store:
        return store.record(record_from_results(results, results_path))
