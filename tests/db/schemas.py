"""What migration tests read of a database: its tables, revisions and a comparable shape; and
a database built by opsgate's revisions as they were before the demo became a plugin."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from opsgate.db.engine import make_engine
from opsgate.db.migrate import alembic_config
from opsgate.plugin import Plugin
from opsgate_demo.plugin import plugin as demo_plugin

# opsgate's revisions 0001-0011 as released before the demo's tables left them (frozen
# copies: they created the demo's tables alongside opsgate's).
OLD_VERSIONS = Path(__file__).parent / "old_migrations" / "versions"
DEMO: Plugin = demo_plugin()
assert DEMO.metadata is not None
DEMO_TABLES = frozenset(DEMO.metadata.tables)


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str, version_table: str = "alembic_version") -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": version_table})
            return context.get_current_revision()
    finally:
        engine.dispose()


def build_old_database(url: str) -> None:
    """Migrate `url` with the old chain: opsgate at 0011, the demo's tables inside it."""
    config = alembic_config(url)
    config.set_main_option("version_locations", str(OLD_VERSIONS))
    command.upgrade(config, "head")


def _sql(value: Any) -> str:
    return re.sub(r"[\s()]+", " ", str(value)).strip().lower()


def shape(url: str) -> dict[str, Any]:
    """Every table's columns (in order, with types, nullability and defaults), key, foreign
    keys, indexes, unique and check constraints: equal shapes, equal schemas."""
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        found: dict[str, Any] = {}
        for table in sorted(inspector.get_table_names()):
            found[table] = {
                "columns": [
                    (c["name"], str(c["type"]), c["nullable"], _sql(c.get("default")))
                    for c in inspector.get_columns(table)
                ],
                "primary_key": inspector.get_pk_constraint(table),
                "foreign_keys": sorted(
                    (fk["name"], tuple(fk["constrained_columns"]), fk["referred_table"])
                    for fk in inspector.get_foreign_keys(table)
                ),
                "indexes": sorted(
                    (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(table)
                ),
                "unique": sorted(
                    (u["name"], tuple(u["column_names"]))
                    for u in inspector.get_unique_constraints(table)
                ),
                "checks": sorted(
                    (c["name"], _sql(c["sqltext"])) for c in inspector.get_check_constraints(table)
                ),
            }
        return found
    finally:
        engine.dispose()
