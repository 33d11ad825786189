"""`opsgate db upgrade` and `opsgate db current`: opsgate's schema, then each enabled plugin's
from its own history (SQLite and PostgreSQL, on empty databases as the owner)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.db.base import Base
from opsgate.settings import get_settings
from tests.db.schemas import DEMO_TABLES, tables

runner = CliRunner()


@pytest.fixture
def cli_on(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    """Call with a database URL and OPSGATE_PLUGINS (None: unset) and the command's args."""

    def invoke(url: str, plugins: str | None, *args: str) -> Result:
        monkeypatch.setenv("OPSGATE_DATABASE_URL", url)
        monkeypatch.delenv("OPSGATE_MIGRATION_DATABASE_URL", raising=False)
        monkeypatch.delenv("OPSGATE_POLICY", raising=False)
        if plugins is None:
            monkeypatch.delenv("OPSGATE_PLUGINS", raising=False)
        else:
            monkeypatch.setenv("OPSGATE_PLUGINS", plugins)
        get_settings.cache_clear()
        return runner.invoke(app, list(args))

    yield invoke
    get_settings.cache_clear()


def test_without_plugins_db_upgrade_creates_no_demo_table(
    empty_url: str, cli_on: Callable[..., Result]
) -> None:
    result = cli_on(empty_url, "none", "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}

    current = cli_on(empty_url, "none", "db", "current", "--json")
    assert current.exit_code == 0, current.output
    [opsgate] = json.loads(current.stdout)
    assert (opsgate["owner"], opsgate["at_head"]) == ("opsgate", True)


def test_a_plugin_enabled_later_shows_behind_until_db_upgrade_migrates_it(
    empty_url: str, cli_on: Callable[..., Result]
) -> None:
    assert cli_on(empty_url, "none", "db", "upgrade").exit_code == 0

    behind = cli_on(empty_url, "demo", "db", "current")
    assert behind.exit_code == 1, behind.output
    assert "alembic_version_demo" in behind.stdout and "behind" in behind.stdout

    upgraded = cli_on(empty_url, "demo", "db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.output
    assert "plugin demo: migrated to head" in upgraded.stderr
    assert tables(empty_url) >= DEMO_TABLES

    current = cli_on(empty_url, "demo", "db", "current", "--json")
    assert current.exit_code == 0, current.output
    states = {row["owner"]: row for row in json.loads(current.stdout)}
    assert states["demo"]["current"] == states["demo"]["heads"] == ["demo_0001"]
    assert states["opsgate"]["at_head"] is True


def test_db_upgrade_of_one_plugin_leaves_opsgate_where_it_is(
    empty_url: str, cli_on: Callable[..., Result]
) -> None:
    assert cli_on(empty_url, "none", "db", "upgrade", "0010").exit_code == 0
    result = cli_on(empty_url, "demo", "db", "upgrade", "--plugin", "demo")
    assert result.exit_code == 0, result.output
    states = {row["owner"]: row for row in json.loads(cli_on(
        empty_url, "demo", "db", "current", "--json"
    ).stdout)}  # fmt: skip
    assert states["opsgate"]["current"] == ["0010"]
    assert states["demo"]["at_head"] is True

    unknown = cli_on(empty_url, "demo", "db", "upgrade", "--plugin", "nosuch")
    assert unknown.exit_code == 2
    assert "no enabled plugin nosuch" in unknown.stderr


PLUGIN_MODULE = """
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table

from opsgate.plugin import NAMING_CONVENTION, Plugin

metadata = MetaData(naming_convention=NAMING_CONVENTION)
Table("widgets", metadata, Column("id", Integer, primary_key=True), Column("name", String(40)))
plugin = Plugin(name="widgets", metadata=metadata, migrations=Path(__file__).parent / "migrations")
"""


def test_a_plugin_author_writes_revisions_without_an_alembic_env(
    empty_url: str,
    cli_on: Callable[..., Result],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    package = tmp_path / f"widgets_{secrets.token_hex(3)}"
    (package / "migrations" / "versions").mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    enabled = f"{package.name}:plugin"
    assert cli_on(empty_url, enabled, "db", "upgrade").exit_code == 0  # no revision yet

    wrote = cli_on(
        empty_url, enabled, "db", "revision", "--plugin", "widgets", "-m", "widgets",
        "--autogenerate",
    )  # fmt: skip
    assert wrote.exit_code == 0, wrote.output
    [revision] = (package / "migrations" / "versions").glob("*.py")
    source = revision.read_text()
    assert "op.create_table('widgets'" in source
    assert "audit_records" not in source and "users" not in source  # opsgate's are not its own

    assert cli_on(empty_url, enabled, "db", "upgrade").exit_code == 0
    assert "widgets" in tables(empty_url)
    current = cli_on(empty_url, enabled, "db", "current", "--json")
    assert current.exit_code == 0, current.output
    states = {row["owner"]: row for row in json.loads(current.stdout)}
    assert states["widgets"]["version_table"] == "alembic_version_widgets"
    assert states["widgets"]["at_head"] is True


def test_serve_refuses_a_plugin_whose_tables_were_never_migrated(
    empty_url: str, cli_on: Callable[..., Result]
) -> None:
    assert cli_on(empty_url, "none", "db", "upgrade").exit_code == 0

    refused = cli_on(empty_url, "demo", "serve", "--port", "1")
    assert refused.exit_code == 2, refused.output
    assert "the demo schema is at none, not at its head demo_0001" in " ".join(
        refused.stderr.split()
    )
