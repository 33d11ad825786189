"""Engines and sessions for SQLite (embedded default) and PostgreSQL (production).

SQLite runs in WAL mode with foreign keys on and a busy timeout. Its driver's implicit
transaction handling is replaced by explicit `BEGIN IMMEDIATE` for write sessions: a write
transaction takes the single writer lock up front, so two writers queue on the busy timeout
instead of failing with "database is locked" when a reader tries to upgrade.

A `Database` may bound how long a write transaction waits (`lock_timeout`) and how long one
statement runs (`statement_timeout`): PostgreSQL's `SET LOCAL` at the start of every write
transaction, SQLite's busy timeout (it has no statement timeout). The server sets both below
the idempotency takeover timeout (settings.py), so a request stuck behind a locked target gives
up before a retry may judge it dead (core/actions/idempotency.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "opsgate_write"
# PostgreSQL's SQLSTATEs for a lock wait or a statement cut short by its timeout.
_TIMEOUT_SQLSTATES = frozenset({"55P03", "57014"})


def normalise_url(url: str) -> str:
    """Use psycopg 3 for `postgresql://` URLs (SQLAlchemy's default driver is psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    lock_timeout: timedelta | None = None,
    statement_timeout: timedelta | None = None,
) -> Engine:
    """Create an engine with the connection settings opsgate relies on for `url`; write
    transactions wait at most `lock_timeout` for a lock and run no statement longer than
    `statement_timeout` (SQLite: the busy timeout only)."""
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        busy_ms = _milliseconds(lock_timeout) if lock_timeout else SQLITE_BUSY_TIMEOUT_MS
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_ms / 1000}
        )
        _configure_sqlite(engine, busy_ms)
        return engine
    engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    _configure_postgresql(engine, lock_timeout, statement_timeout)
    return engine


def _milliseconds(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


def is_timeout(exc: BaseException) -> bool:
    """True when `exc` is a lock wait or statement that its timeout cut short."""
    if not isinstance(exc, DBAPIError):
        return False
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is not None:
        return sqlstate in _TIMEOUT_SQLSTATES
    return "database is locked" in str(exc.orig)


def _configure_postgresql(
    engine: Engine, lock_timeout: timedelta | None, statement_timeout: timedelta | None
) -> None:
    settings = []
    if lock_timeout is not None:
        settings.append(f"SET LOCAL lock_timeout = {_milliseconds(lock_timeout)}")
    if statement_timeout is not None:
        settings.append(f"SET LOCAL statement_timeout = {_milliseconds(statement_timeout)}")
    if not settings:
        return

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Only write transactions: long reads (exports, verification) keep no such bound.
        if conn.get_execution_options().get(_WRITE_OPTION, False):
            for statement in settings:
                conn.exec_driver_sql(statement)


def _configure_sqlite(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module; we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()
        # SQLite's own lower() folds ASCII only; searches must find "Ömer" as "ömer" too.
        dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class Database:
    """One engine and the two kinds of session opsgate uses on it."""

    def __init__(
        self,
        url: str,
        *,
        lock_timeout: timedelta | None = None,
        statement_timeout: timedelta | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(
            self.url, lock_timeout=lock_timeout, statement_timeout=statement_timeout
        )
        self.dialect = self.engine.dialect.name
        self._reads = sessionmaker(self.engine, expire_on_commit=False)
        self._writes = sessionmaker(
            self.engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )

    def reading(self) -> Session:
        """A session for queries. On SQLite it does not take the writer lock."""
        return self._reads()

    def writing(self) -> Session:
        """A session for a write transaction (on SQLite: `BEGIN IMMEDIATE`)."""
        return self._writes()

    def dispose(self) -> None:
        self.engine.dispose()
