"""`opsgate audit verify`, `audit anchor`, `serve` and the audited commands when someone has
written to the chain outside opsgate (DESIGN.md invariants 7 and 11), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.settings import get_settings
from opsgate.web.services import Services
from tests.conftest import TestDatabase, World
from tests.core.test_audit_chain import forged_copy, make_trail, records, tampering

runner = CliRunner()


@pytest.fixture
def cli_db(test_db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestDatabase]:
    monkeypatch.setenv("OPSGATE_DATABASE_URL", test_db.url)
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    get_settings.cache_clear()
    yield test_db
    get_settings.cache_clear()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `opsgate` entry point in a child process (as an operator runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "opsgate.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def planted(
    cli_db: TestDatabase, services: Services, world: World, db: Database, owner_db: Database
) -> AuditRecord:
    """A well-hashed record written beyond the head, without moving it (as the owner)."""
    make_trail(services, world)
    last = records(db)[-1]
    forged = forged_copy(last, seq=last.seq + 1, prev_hash=last.hash)
    with tampering(owner_db) as session:
        session.add(forged)
    return forged


def test_verify_names_a_record_beyond_the_head_and_exits_1(planted: AuditRecord) -> None:
    result = invoke("audit", "verify")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    said = flat(result.stderr)
    assert f"BROKEN at record {planted.id} (seq {planted.seq})" in said
    assert f"record {planted.id} (seq {planted.seq}) lies beyond the chain head" in said


@pytest.mark.parametrize(
    "command",
    [("users", "create", "newbie", "--role", "support_agent"), ("tokens", "create", "alice")],
)
def test_audited_commands_refuse_with_the_same_message(
    planted: AuditRecord, command: tuple[str, ...]
) -> None:
    result = run_cli(*command)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    said = flat(result.stderr)
    assert f"record {planted.id} (seq {planted.seq}) lies beyond the chain head" in said


def test_serve_refuses_to_start_with_the_same_message(planted: AuditRecord) -> None:
    result = run_cli("serve", "--port", "1")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"record {planted.id} (seq {planted.seq}) lies beyond the chain head" in flat(
        result.stderr
    )
