"""`opsgate audit verify`, `audit anchor`, `serve` and the audited commands when someone has
written to the chain outside opsgate (DESIGN.md invariants 7 and 11), on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
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


# --- anchors -----------------------------------------------------------------------------------


def test_plain_verify_catches_an_owners_rewrite_after_an_anchor(
    cli_db: TestDatabase, services: Services, world: World, db: Database, owner_db: Database
) -> None:
    from tests.core.test_anchoring import erase_as_owner, reverse_a_payment

    make_trail(services, world)
    reversal = reverse_a_payment(services, world, db)
    make_trail(services, world)
    anchored = invoke("audit", "anchor")
    assert anchored.exit_code == 0, anchored.output
    assert anchored.stdout.startswith(f"anchored {records(db)[-1].seq}:")
    assert invoke("audit", "verify").exit_code == 0

    erase_as_owner(cli_db, owner_db, reversal.seq)
    broken = invoke("audit", "verify")
    assert broken.exit_code == 1, broken.output
    assert "BROKEN" in broken.stderr and "anchor" in broken.stderr
    refused = invoke("audit", "anchor", "--force")  # and nothing signs the rewritten head
    assert refused.exit_code == 1
    assert "not anchored" in flat(refused.stderr)


def test_verify_warns_when_anchoring_has_stopped(
    cli_db: TestDatabase,
    services: Services,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSGATE_AUDIT_ANCHOR_EVERY_RECORDS", "2")
    get_settings.cache_clear()
    make_trail(services, world)
    result = invoke("audit", "verify")
    assert result.exit_code == 0, result.output
    assert "warning: anchoring has stopped" in flat(result.stderr)


def test_anchor_prints_the_public_key_a_verifier_needs(cli_db: TestDatabase) -> None:
    from opsgate.core.audit.anchors import parse_public_keys

    shown = invoke("audit", "anchor", "--public-key")
    assert shown.exit_code == 0, shown.output
    key_id, public = shown.stdout.split()
    assert list(parse_public_keys(public)) == [key_id]


def test_serve_anchors_on_its_own(
    test_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opsgate.core.audit.anchors import AnchorSink
    from tests.servers import start_server

    sink = AnchorSink(Path(os.environ["OPSGATE_AUDIT_ANCHOR_DIR"]))
    server = start_server(
        test_db.url, tmp_path / "serve.log", OPSGATE_AUDIT_ANCHOR_INTERVAL_SECONDS="1"
    )
    try:
        db = Database(test_db.url)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and sink.latest() is None:
                time.sleep(0.1)
            anchor = sink.latest()
            assert anchor is not None, (tmp_path / "serve.log").read_text()
            assert anchor.seq == records(db)[-1].seq  # its own system.start, anchored
        finally:
            db.dispose()
    finally:
        server.stop()


def test_the_verify_api_names_a_record_beyond_the_head_instead_of_a_500(
    client: TestClient, world: World, planted: AuditRecord
) -> None:
    # The server started before the record was planted (after, it would not have started).
    response = client.get("/api/v1/audit/verify", headers=world.auth("audrey"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["ok"], body["first_bad_id"], body["first_bad_seq"]) == (
        False,
        planted.id,
        planted.seq,
    )
    assert f"record {planted.id} (seq {planted.seq}) lies beyond the chain head" in body["problem"]


def test_an_action_while_a_record_lies_beyond_the_head_is_refused_with_its_own_code(
    client: TestClient, world: World, planted: AuditRecord
) -> None:
    # Nothing can be recorded, so nothing may change: a clear 503, never a bare 500.
    response = client.post(
        "/api/v1/actions/customer.add_note",
        json={
            "target": f"customer:{world.customer()}",
            "payload": {"text": "while the chain is blocked"},
            "reason": "test",
        },
        headers=world.auth("alice"),
    )
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "audit_blocked"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert f"record {planted.id} (seq {planted.seq}) lies beyond the chain head" in body["detail"]
