"""Run Alembic migrations from code (the CLI, `make run` and the test fixtures use this), and
give the application's PostgreSQL role exactly the rights it needs.

On PostgreSQL opsgate runs as two roles. The owner (OPSGATE_MIGRATION_DATABASE_URL) owns the
tables and runs migrations; only an owner can `ALTER TABLE … DISABLE TRIGGER`, drop the
append-only triggers or truncate. The app (OPSGATE_DATABASE_URL) owns nothing and holds only
row rights: it may read and write opsgate's tables, but on `audit_records` only SELECT, INSERT
and the DELETE the append-only trigger lets through (an archive permit in the same
transaction), never UPDATE or TRUNCATE. SQLite has no roles: file permissions are its only
boundary.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError

from opsgate.db.engine import make_engine, normalise_url

MIGRATIONS = Path(__file__).parent / "migrations"
AUDIT_TABLE = "audit_records"
# Written by the owner's migrations only; the app may read which revision it runs on.
READ_ONLY_TABLES = ("alembic_version",)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head", *, app_url: str | None = None) -> None:
    """Migrate the database at `url` (as its owner) to `revision` (default: the single head);
    then, on PostgreSQL with an `app_url` naming another role, grant that role its rights."""
    command.upgrade(alembic_config(url), revision)
    if app_url is not None:
        grant_app_role(url, app_url)


def role_of(url: str) -> str | None:
    """The role a PostgreSQL URL connects as (None: SQLite, or the driver's default user)."""
    parsed = make_url(normalise_url(url))
    return parsed.username if parsed.get_backend_name() == "postgresql" else None


def grant_app_role(owner_url: str, app_url: str) -> str | None:
    """As the owner, create the app role of `app_url` if it does not exist (with the URL's
    password; the owner needs CREATEROLE for that) and grant it row rights on every table.
    Safe to re-run; returns the role, or None when there is nothing to do (SQLite, or the
    app connects as the owner itself)."""
    role = role_of(app_url)
    if role is None or role == role_of(owner_url):
        return None
    password = make_url(normalise_url(app_url)).password
    engine = make_engine(owner_url, pool_size=1)
    try:
        with engine.begin() as connection:
            _ensure_role(connection, role, None if password is None else str(password))
            _grant(connection, role)
    finally:
        engine.dispose()
    return role


def _ensure_role(connection: Connection, role: str, password: str | None) -> None:
    exists = connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    if exists:
        return
    quoted = _ident(connection, role)
    # NOINHERIT and no attributes: a login that can be granted nothing by membership.
    statement = f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
    if password is not None:
        literal = connection.scalar(text("SELECT quote_literal(:p)"), {"p": password})
        statement += f" PASSWORD {literal}"
    try:
        # In a savepoint: another process creating the same role meanwhile is not an error.
        with connection.begin_nested():
            connection.exec_driver_sql(statement)
    except DBAPIError:
        if not connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}):
            raise


def _grant(connection: Connection, role: str) -> None:
    quoted = _ident(connection, role)
    database = _ident(connection, str(connection.scalar(text("SELECT current_database()"))))
    for statement in (
        f"GRANT CONNECT ON DATABASE {database} TO {quoted}",
        f"GRANT USAGE ON SCHEMA public TO {quoted}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}",
        # Whatever an earlier grant (or a hand) gave beyond row rights is taken back.
        f"REVOKE TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA public FROM {quoted}",
        f"REVOKE UPDATE ON {AUDIT_TABLE} FROM {quoted}",
        *(f"REVOKE INSERT, UPDATE, DELETE ON {t} FROM {quoted}" for t in READ_ONLY_TABLES),
    ):
        connection.exec_driver_sql(statement)


def _ident(connection: Connection, name: str) -> str:
    return str(connection.scalar(text("SELECT quote_ident(:n)"), {"n": name}))
