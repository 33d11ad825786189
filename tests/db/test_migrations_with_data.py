"""Migrations on a database that already holds data: the demo world plus audit records, and a
database the old chain built (the demo's tables inside opsgate's history) adopted by the demo's
own first revision with its data intact."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Column, Integer, MetaData, Table, text
from sqlalchemy.engine import make_url

from opsgate.core.audit.chain import verify
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database, make_engine
from opsgate.db.migrate import PluginMigrationError, alembic_config, plugin_config, upgrade
from opsgate.plugin import Plugin
from opsgate.web.services import Services
from opsgate_demo import seed as demo_seed
from tests.conftest import TestDatabase, World, _pg_app_url_for
from tests.db.schemas import DEMO, DEMO_TABLES, build_old_database, current_revision, shape

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_downgrade_and_upgrade_keep_data_and_rebuild_the_chain(
    test_db: TestDatabase, services: Services, world: World
) -> None:
    clerk = Actor(id=world.user_ids["alice"], name="alice", roles=frozenset({"support_agent"}))
    for n in range(3):
        services.gateway.submit(
            clerk,
            "customer.add_note",
            {"target": f"customer:{world.customer(n)}", "payload": {"text": "hi"}, "reason": "r"},
            Origin(f"m-{n}"),
        )
    services.db.dispose()
    # Migrations run as the owner; the upgrade grants the app role its rights on the tables
    # it recreated, and the app verifies the chain.
    config = alembic_config(test_db.owner_url)
    command.downgrade(config, "0002")  # recreates tables that hold rows and foreign keys
    upgrade(test_db.owner_url, app_url=test_db.url, plugins=[DEMO])
    command.check(config)
    command.check(plugin_config(test_db.owner_url, DEMO))
    db = Database(test_db.url)
    with db.reading() as session:
        result = verify(session)
        notes = session.scalar(text("SELECT count(*) FROM notes WHERE text = 'hi'"))
    db.dispose()
    assert result.ok, result
    assert result.entries == 3
    assert notes == 3


def _counts(url: str) -> dict[str, int]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = {t: conn.scalar(text(f"SELECT count(*) FROM {t}")) for t in DEMO_TABLES}
            found["users"] = conn.scalar(text("SELECT count(*) FROM users"))
            return {table: int(n or 0) for table, n in found.items()}
    finally:
        engine.dispose()


def _app_url(test_db: TestDatabase, owner_url: str) -> str | None:
    if test_db.backend == "sqlite":
        return None
    return _pg_app_url_for(str(make_url(owner_url).database))


def _old_database_with_demo_data(url: str) -> dict[str, int]:
    build_old_database(url)
    db = Database(url)
    with db.writing() as session:
        demo_seed.seed(session, now=NOW)
        session.commit()
    db.dispose()
    counts = _counts(url)
    assert counts["customers"] and counts["payments"] and counts["ledger_entries"]
    return counts


def test_an_old_database_upgrades_with_its_demo_data_intact(
    test_db: TestDatabase, empty_url: str
) -> None:
    counts = _old_database_with_demo_data(empty_url)
    assert current_revision(empty_url, "alembic_version_demo") is None

    upgrade(empty_url, app_url=_app_url(test_db, empty_url), plugins=[DEMO])

    assert _counts(empty_url) == counts
    assert current_revision(empty_url) == "0011"
    assert current_revision(empty_url, "alembic_version_demo") == "demo_0001"
    command.check(alembic_config(empty_url))
    command.check(plugin_config(empty_url, DEMO))


def test_an_old_database_and_a_fresh_one_end_with_the_same_schema(
    test_db: TestDatabase, new_empty_url: Callable[[], str]
) -> None:
    old, fresh = new_empty_url(), new_empty_url()
    build_old_database(old)
    upgrade(old, plugins=[DEMO])
    upgrade(fresh, plugins=[DEMO])
    assert shape(old) == shape(fresh)


def test_an_old_demo_table_of_another_shape_is_not_adopted(
    test_db: TestDatabase, empty_url: str
) -> None:
    counts = _old_database_with_demo_data(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_payments_account_id"))
    engine.dispose()

    with pytest.raises(RuntimeError, match="not adopted: missing index ix_payments_account_id"):
        upgrade(empty_url, plugins=[DEMO])

    assert current_revision(empty_url, "alembic_version_demo") is None
    assert _counts(empty_url) == counts


def test_old_demo_tables_present_only_in_part_are_not_adopted(
    test_db: TestDatabase, empty_url: str
) -> None:
    build_old_database(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE notes"))
    engine.dispose()

    with pytest.raises(RuntimeError, match=r"exist only in part \(missing: notes\)"):
        upgrade(empty_url, plugins=[DEMO])
    assert current_revision(empty_url, "alembic_version_demo") is None


ROGUE_REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "rogue_0001"
down_revision = None


def upgrade():
    op.create_table("rogue_things", sa.Column("id", sa.Integer(), primary_key=True))
    op.execute("UPDATE alembic_version SET version_num = '0001'")


def downgrade():
    op.drop_table("rogue_things")
"""


def test_a_plugins_migrations_cannot_move_opsgates_version(
    test_db: TestDatabase, empty_url: str, tmp_path: Path
) -> None:
    versions = tmp_path / "rogue" / "versions"
    versions.mkdir(parents=True)
    (versions / "rogue_0001.py").write_text(ROGUE_REVISION)
    rogue = Plugin(name="rogue", metadata=MetaData(), migrations=tmp_path / "rogue")

    with pytest.raises(RuntimeError, match="changed opsgate's version table"):
        upgrade(empty_url, plugins=[rogue])

    assert current_revision(empty_url) == "0011"
    assert current_revision(empty_url, "alembic_version_rogue") is None
    engine = make_engine(empty_url)
    try:
        with engine.connect() as conn:
            assert not engine.dialect.has_table(conn, "rogue_things")  # rolled back with it
    finally:
        engine.dispose()


def test_a_plugin_declaring_opsgates_tables_is_refused() -> None:
    metadata = MetaData()
    Table("users", metadata, Column("id", Integer, primary_key=True))
    squatter = Plugin(name="squatter", metadata=metadata, migrations=DEMO.migrations)
    with pytest.raises(PluginMigrationError, match="declares tables opsgate owns: users"):
        upgrade("sqlite://", plugins=[squatter])


def test_two_plugins_declaring_one_table_are_refused() -> None:
    twin = Plugin(name="twin", metadata=DEMO.metadata, migrations=DEMO.migrations)
    with pytest.raises(PluginMigrationError, match="'demo' and 'twin' both declare table"):
        upgrade("sqlite://", plugins=[DEMO, twin])
