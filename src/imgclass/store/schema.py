"""The run store's tables, its versioned migrations and how a store URL becomes a connected engine.

``MIGRATIONS[i]`` brings a store from version ``i`` to ``i + 1``; ``migrate`` applies the missing ones in one
transaction that first takes a lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction-scoped advisory
lock), so two processes opening a fresh store at once create it once, and the second sees it made.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from ..errors import ImgclassError, UsageError

__all__ = [
    "METADATA",
    "METRICS",
    "MIGRATIONS",
    "RUNS",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_TABLE",
    "is_locked",
    "make_engine",
    "migrate",
    "read_transaction",
    "redact",
    "stored_version",
    "write_transaction",
]

METADATA = sa.MetaData()

# The current tables. Migration 1 creates them as they are now; a later migration that changes one must first
# freeze version 1's definition inside ``_v1`` (migrations replay history, they do not read the current tables).
RUNS = sa.Table(
    "runs", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("created", sa.String(64), nullable=False),
    sa.Column("created_key", sa.String(64), nullable=False, index=True),  # UTC, sortable
    sa.Column("model_spec", sa.Text, nullable=False),
    sa.Column("model_group", sa.Text, nullable=False),
    sa.Column("model_label", sa.Text, nullable=False),
    sa.Column("weights_sha256", sa.String(64)),
    sa.Column("data_spec", sa.Text, nullable=False),
    sa.Column("files_sha256", sa.String(64)),
    sa.Column("probes", sa.JSON, nullable=False),
    sa.Column("probe_index", sa.Text, nullable=False),  # ",accuracy,calibration,": "ran probe P" on every backend
    sa.Column("probe_params", sa.JSON, nullable=False),
    sa.Column("seed", sa.Integer),
    sa.Column("versions", sa.JSON, nullable=False),
    sa.Column("device", sa.String(64)),
    sa.Column("timings", sa.JSON, nullable=False),
    sa.Column("protocols", sa.JSON, nullable=False),
    sa.Column("results_path", sa.Text),
    sa.Column("report_path", sa.Text),
    sa.Column("results_sha256", sa.String(64), unique=True),
    sa.Column("command", sa.JSON),
    sa.Column("status", sa.String(32), nullable=False),
)

METRICS = sa.Table(
    "metrics", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),  # insertion order = the headline's order
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("name", sa.String(255), nullable=False, index=True),
    sa.Column("value", sa.Double, nullable=True),
)

SCHEMA_VERSION_TABLE = sa.Table(
    "schema_version", METADATA,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("applied", sa.String(64), nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    """Version 1: runs, metrics and schema_version."""
    METADATA.create_all(conn, tables=[SCHEMA_VERSION_TABLE, RUNS, METRICS], checkfirst=True)


MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)

_LOCK_KEY = 0x1D6C_5701  # PostgreSQL advisory lock: "imgclass store schema"


def stored_version(conn: sa.Connection) -> int:
    """The store's schema version (0: empty database)."""
    if not sa.inspect(conn).has_table(SCHEMA_VERSION_TABLE.name):
        return 0
    return int(conn.execute(sa.select(sa.func.max(SCHEMA_VERSION_TABLE.c.version))).scalar() or 0)


def migrate(engine: sa.Engine, *, shown_url: str, migrations: list | None = None) -> int:
    """Bring the store to the code's schema version in one locked transaction; refuse a newer store."""
    migrations = MIGRATIONS if migrations is None else migrations
    known = len(migrations)

    def check(version: int) -> None:
        if version > known:
            raise ImgclassError(f"run store {shown_url} has schema version {version}, newer than this imgclass "
                                f"knows (up to {known}): upgrade imgclass")

    def run(conn: sa.Connection) -> int:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        version = stored_version(conn)
        check(version)
        for v in range(version, known):
            migrations[v](conn)
            conn.execute(SCHEMA_VERSION_TABLE.insert().values(version=v + 1, applied=_now()))
        return known

    current = read_transaction(engine, stored_version)  # up to date: no write lock taken
    check(current)
    if current == known:
        return known
    for attempt in range(3):
        try:
            return write_transaction(engine, run)
        except (sa_exc.ProgrammingError, sa_exc.IntegrityError, sa_exc.OperationalError) as e:
            # another process created the schema between our check and our CREATE (backends without a lock):
            # re-read the version
            if attempt == 2 or not re.search(r"already exists|duplicate", str(e.orig), re.IGNORECASE):
                raise
    raise AssertionError("unreachable")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# -- engines ------------------------------------------------------------------------------------------------------

def redact(url: str | sa.URL) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", str(url))


def normalize_url(url: str) -> str:
    """A path becomes a SQLite URL; ``postgresql://`` uses psycopg 3 (the ``postgres`` extra)."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def make_engine(url: str) -> sa.Engine:
    """An engine for the store URL: SQLite in WAL mode with a busy timeout and our own BEGIN, PostgreSQL with a
    connect timeout."""
    try:
        parsed = sa.make_url(url)
    except sa_exc.ArgumentError:
        raise UsageError(f"not a database URL: {redact(url)} (give sqlite:///PATH, postgresql://USER@HOST/DB "
                         "or a file path)") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(parsed)
        connect_args = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
        return sa.create_engine(parsed, connect_args=connect_args, pool_pre_ping=True)
    except sa_exc.NoSuchModuleError:
        raise UsageError(f"cannot open run store {redact(url)}: SQLAlchemy knows no database {parsed.drivername!r} "
                         "(give sqlite:///PATH or postgresql://USER@HOST/DB)") from None
    except ModuleNotFoundError as e:
        hint = " (pip install 'imgclass[postgres]')" if parsed.get_backend_name() == "postgresql" else ""
        raise ImgclassError(f"cannot open run store {redact(url)}: its driver {e.name} is not installed{hint}") from None


SQLITE_BUSY_SECONDS = 60.0


def _sqlite_engine(url: sa.URL) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_SECONDS})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, record):
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (transactional DDL, BEGIN IMMEDIATE)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_SECONDS * 1000)}")
        if url.database not in (None, "", ":memory:"):
            _retry_locked(lambda: cur.execute("PRAGMA journal_mode = WAL"))
        cur.execute("PRAGMA synchronous = NORMAL")  # with WAL: never corrupt, a power loss may lose the last commit
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn):
        immediate = conn.get_execution_options().get("imgclass_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# -- transactions -------------------------------------------------------------------------------------------------

T = TypeVar("T")


def is_locked(e: BaseException) -> bool:
    """SQLite's "database is locked"/"busy" (another writer held the lock past the busy timeout)."""
    text = str(getattr(e, "orig", e)).lower()
    return "database is locked" in text or "database is busy" in text or "database table is locked" in text


def _retry_locked(fn: Callable[[], T], *, tries: int = 5) -> T:
    for attempt in range(tries):
        try:
            return fn()
        except Exception as e:
            if attempt == tries - 1 or not is_locked(e):
                raise
            time.sleep(0.05 * 2 ** attempt)
    raise AssertionError("unreachable")


def write_transaction(engine: sa.Engine, fn: Callable[[sa.Connection], T]) -> T:
    """Run ``fn(conn)`` in one write transaction (SQLite: ``BEGIN IMMEDIATE``), retried when the database is
    locked; all or nothing."""
    def once() -> T:
        with engine.connect() as conn:
            conn = conn.execution_options(imgclass_write=True)
            with conn.begin():
                return fn(conn)
    return _retry_locked(once)


def read_transaction(engine: sa.Engine, fn: Callable[[sa.Connection], T]) -> T:
    """Run ``fn(conn)`` in one read transaction (a consistent snapshot)."""
    def once() -> T:
        with engine.connect() as conn, conn.begin():
            return fn(conn)
    return _retry_locked(once)
