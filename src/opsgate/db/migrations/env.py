"""Alembic environment of opsgate and of every plugin: migrates the database named in the
Alembic config's URL.

The same environment runs opsgate's own revisions and each plugin's (`db/migrate.py` says
which through `config.attributes`): a plugin writes revisions, never an env.py. Each history
has its own version table and looks only at its own tables, so opsgate never proposes to drop
a plugin's tables, a plugin never sees opsgate's, and a plugin's revisions cannot move
opsgate's version row (checked before the transaction commits).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Connection

from opsgate.db.base import Base
from opsgate.db.engine import make_engine

OPSGATE_VERSION_TABLE = "alembic_version"

attributes = context.config.attributes
target_metadata: MetaData = attributes.get("metadata", Base.metadata)
version_table: str = attributes.get("version_table", OPSGATE_VERSION_TABLE)
owner: str = attributes.get("owner", "opsgate")


def _own_tables_only(name: str | None, type_: str, _parents: Any) -> bool:
    # Autogenerate (and `alembic check`) compares only this history's tables.
    return type_ != "table" or name in target_metadata.tables


def _opsgate_version(connection: Connection) -> list[str] | None:
    if not connection.dialect.has_table(connection, OPSGATE_VERSION_TABLE):
        return None
    rows = connection.execute(text(f"SELECT version_num FROM {OPSGATE_VERSION_TABLE}"))
    return sorted(str(row[0]) for row in rows)


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set"
    if context.is_offline_mode():
        context.configure(
            url=url,
            target_metadata=target_metadata,
            literal_binds=True,
            version_table=version_table,
            include_name=_own_tables_only,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        # Batch migrations recreate tables; with foreign keys enforced, dropping a referenced
        # table fails. Integrity is checked after the migration instead.
        @event.listens_for(engine, "connect")
        def _no_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA foreign_keys=OFF")

    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            version_table=version_table,
            include_name=_own_tables_only,
            # opsgate's SQLite engine issues its own BEGIN, so DDL is transactional there too:
            # one run commits whole or not at all (Alembic would otherwise commit per revision).
            transactional_ddl=True,
        )
        with context.begin_transaction():
            before = _opsgate_version(connection)
            context.run_migrations()
            if version_table != OPSGATE_VERSION_TABLE and _opsgate_version(connection) != before:
                raise RuntimeError(
                    f"plugin {owner!r}: its migrations changed opsgate's version table "
                    f"({OPSGATE_VERSION_TABLE}); nothing was committed"
                )
        if connection.dialect.name == "sqlite":
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"foreign keys broken by the migration: {broken[:5]}")
    engine.dispose()


run_migrations()
