"""`opsgate trace` over a request that went through approval, and the trace IDs of the
records CLI commands write (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.core.tracing import is_trace_id
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.settings import get_settings
from tests.conftest import TestDatabase, World

runner = CliRunner()
REQUESTER_TRACE = "11111111111111111111111111111111"
APPROVER_TRACE = "22222222222222222222222222222222"
SPAN = "00f067aa0ba902b7"


@pytest.fixture
def cli_db(test_db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestDatabase]:
    """Point the CLI's settings at the test database."""
    monkeypatch.setenv("OPSGATE_DATABASE_URL", test_db.url)
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    monkeypatch.delenv("TRACEPARENT", raising=False)
    get_settings.cache_clear()
    yield test_db
    get_settings.cache_clear()


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env={"COLUMNS": "250", **(env or {})})


@dataclass(frozen=True)
class Unblock:
    approval_id: str
    execution_id: str
    requester_request_id: str
    approver_request_id: str


def approved_unblock(client: TestClient, world: World) -> Unblock:
    """Ask (rita) and approve (olga) an unblock through the API; the approval and execution IDs."""
    account = world.account()
    blocked = client.post(
        "/api/v1/actions/account.block",
        json={
            "target": f"account:{account}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "suspicious",
        },
        headers=world.auth("alice"),
    )
    assert blocked.status_code == 200, blocked.text
    asked = client.post(
        "/api/v1/actions/account.unblock",
        json={"target": f"account:{account}", "payload": {}, "reason": "verified by phone"},
        headers=world.auth("rita")
        | {"X-Request-ID": "unblock-42", "traceparent": f"00-{REQUESTER_TRACE}-{SPAN}-01"},
    )
    assert asked.status_code == 202, asked.text
    approval_id = str(asked.json()["approval_id"])
    approved = client.post(
        f"/api/v1/approvals/{approval_id}/approve",
        json={"comment": "checked the recording"},
        headers=world.auth("olga")
        | {"X-Request-ID": "approve-42", "traceparent": f"00-{APPROVER_TRACE}-{SPAN}-01"},
    )
    assert approved.status_code == 200, approved.text
    return Unblock(
        approval_id,
        str(approved.json()["execution_request_id"]),
        asked.headers["x-request-id"],
        approved.headers["x-request-id"],
    )


def audit_of(db: Database, action: str) -> list[AuditRecord]:
    with db.reading() as session:
        stmt = select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)
        return list(session.scalars(stmt))


def test_trace_json_lists_request_approval_and_execution_in_order(
    cli_db: TestDatabase, client: TestClient, db: Database, world: World
) -> None:
    unblock = approved_unblock(client, world)
    approval_id, execution_id = unblock.approval_id, unblock.execution_id
    requested, approved = unblock.requester_request_id, unblock.approver_request_id

    result = invoke("trace", requested, "--json")

    assert result.exit_code == 0, (result.output, result.exception)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["kind"], e["result"]) for e in events] == [
        ("approval", "now succeeded"),
        ("audit", "approval_requested"),
        ("decision", "approved"),
        ("audit", "approved"),
        ("audit", "succeeded"),
    ]
    audit = [e for e in events if e["kind"] == "audit"]
    assert [e["ids"]["request"] for e in audit] == [requested, approved, requested]
    assert [e["ids"]["trace"] for e in audit] == [REQUESTER_TRACE, APPROVER_TRACE, APPROVER_TRACE]
    assert audit[2]["ids"]["execution"] == execution_id
    assert {e["ids"]["approval"] for e in events} == {approval_id}
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    # Reading the trail is itself recorded, by the CLI, in a trace of its own.
    [read] = audit_of(db, "audit.trace")
    assert read.parameters == {"id": requested, "events": 5}
    assert read.actor_id is not None and read.actor_id.startswith("cli:")
    assert read.trace_id is not None and is_trace_id(read.trace_id)
    assert read.trace_id not in (REQUESTER_TRACE, APPROVER_TRACE)


def test_trace_table_by_approval_id(cli_db: TestDatabase, client: TestClient, world: World) -> None:
    unblock = approved_unblock(client, world)
    approval_id, execution_id = unblock.approval_id, unblock.execution_id

    result = invoke("trace", approval_id)

    assert result.exit_code == 0, (result.output, result.exception)
    text = result.stdout
    for expected in (
        "approval_requested",
        "approved",
        unblock.requester_request_id,
        unblock.approver_request_id,
        execution_id,
    ):
        assert expected in text
    rows = [line.split("│") for line in text.splitlines() if line.startswith("│ 2")]
    assert [(row[2].strip(), row[4].strip()) for row in rows] == [
        ("approval", "now succeeded"),
        ("audit", "approval_requested"),
        ("decision", "approved"),
        ("audit", "approved"),
        ("audit", "succeeded"),
    ]


def test_unknown_id_exits_1_with_a_message(cli_db: TestDatabase, db: Database) -> None:
    result = invoke("trace", "no-such-request")

    assert result.exit_code == 1
    assert "nothing known about no-such-request" in " ".join(result.output.split())
    [read] = audit_of(db, "audit.trace")
    assert read.parameters == {"id": "no-such-request", "events": 0}


def test_cli_records_carry_a_new_trace_or_the_one_traceparent_names(
    cli_db: TestDatabase, db: Database
) -> None:
    first = invoke("users", "create", "tina", "--role", "support_agent")
    second = invoke(
        "users",
        "create",
        "tom",
        "--role",
        "support_agent",
        env={"TRACEPARENT": f"00-{REQUESTER_TRACE}-{SPAN}-01"},
    )

    assert (first.exit_code, second.exit_code) == (0, 0), (first.output, second.output)
    created = [row.trace_id for row in audit_of(db, "user.create")]
    assert len(created) == 2
    assert created[0] is not None and is_trace_id(created[0])
    assert created[0] != REQUESTER_TRACE
    assert created[1] == REQUESTER_TRACE
