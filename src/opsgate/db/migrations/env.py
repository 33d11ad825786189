"""Alembic environment: migrates the database named in the Alembic config's URL."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import event

from opsgate.db.base import Base
from opsgate.db.engine import make_engine

target_metadata = Base.metadata


def run_migrations() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set"
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
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
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.dialect.name == "sqlite":
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"foreign keys broken by the migration: {broken[:5]}")
    engine.dispose()


run_migrations()
