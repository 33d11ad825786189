"""`opsgate demo ledger-service init` and `serve`: the ledger's database and its start-up checks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import MetaData, select
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.db.engine import Database
from opsgate_demo.ledger_service.bootstrap import InitError, initialise
from opsgate_demo.ledger_service.models import DOMAIN_TABLES, check_self_contained
from tests.conftest import TestDatabase

runner = CliRunner()


def table_ids(url: str) -> dict[str, set[str]]:
    db = Database(url)
    try:
        with db.reading() as session:
            return {t.name: set(session.scalars(select(t.c.id))) for t in DOMAIN_TABLES}
    finally:
        db.dispose()


def test_init_copies_the_money_state_with_the_same_ids(
    test_db: TestDatabase, ledger_url: str
) -> None:
    copied, source = table_ids(ledger_url), table_ids(test_db.url)

    assert copied == source
    assert len(copied["payments"]) == len(test_db.world.summary.payments)
    db = Database(ledger_url)
    try:
        tables = MetaData()
        tables.reflect(db.engine)
        # Only the money tables and the key store: none of opsgate's own.
        assert set(tables.tables) == {t.name for t in DOMAIN_TABLES} | {"ledger_operations"}
    finally:
        db.dispose()


def test_init_again_leaves_the_ledger_as_it_is(test_db: TestDatabase, ledger_url: str) -> None:
    before = table_ids(ledger_url)

    result = runner.invoke(
        app, ["demo", "ledger-service", "init", "--from", test_db.url, "--database-url", ledger_url]
    )

    assert result.exit_code == 0, result.output
    assert "already initialised" in result.output
    assert table_ids(ledger_url) == before


def test_init_refuses_a_source_without_demo_data(tmp_path: Path) -> None:
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    source = f"sqlite:///{tmp_path / 'empty.db'}"

    result = runner.invoke(
        app, ["demo", "ledger-service", "init", "--from", source, "--database-url", ledger_url]
    )

    assert result.exit_code == 1
    assert "no demo accounts" in " ".join(result.output.split())


def test_init_refuses_to_mix_in_another_data_set(test_db: TestDatabase, ledger_url: str) -> None:
    accounts = DOMAIN_TABLES[1]
    db = Database(ledger_url)
    with db.writing() as session:
        session.execute(
            accounts.insert().values(
                id="acc_other",
                kind="system",
                name="settlement:CHF",
                currency="CHF",
                status="active",
                balance_minor=0,
                created_at=datetime.now(UTC),
                version=1,
            )
        )
        session.commit()
    db.dispose()
    before = table_ids(ledger_url)

    with pytest.raises(InitError, match="not the source's"):
        initialise(test_db.url, ledger_url)
    assert table_ids(ledger_url) == before


def test_the_money_tables_refer_only_to_each_other() -> None:
    check_self_contained()
    with pytest.raises(ValueError, match="payments"):
        check_self_contained(DOMAIN_TABLES[:4] + DOMAIN_TABLES[5:])


def test_serve_refuses_to_start_without_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPSGATE_LEDGER_SECRET", raising=False)

    result = runner.invoke(app, ["demo", "ledger-service", "serve"])

    assert result.exit_code == 2
    assert "OPSGATE_LEDGER_SECRET" in " ".join(result.output.split())


def test_serve_refuses_an_uninitialised_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPSGATE_LEDGER_SECRET", "s" * 32)
    monkeypatch.setenv("OPSGATE_LEDGER_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")

    result = runner.invoke(app, ["demo", "ledger-service", "serve"])

    assert result.exit_code == 2
    assert "ledger-service init" in " ".join(result.output.split())
