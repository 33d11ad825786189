"""The request's trace (W3C traceparent): continued when well formed, else new; carried on the
audit record, every log line of the request, and the `traceresponse` header, including what
runs in the worker thread and what an approver's decision executes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opsgate.core.tracing import is_trace_id, parse_traceparent
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from tests.conftest import World

Logs = Callable[[], list[dict[str, Any]]]
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT_SPAN}-01"


def max_seq(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.max(AuditRecord.seq))) or 0)


def audit_since(db: Database, seq: int) -> list[AuditRecord]:
    with db.reading() as session:
        stmt = select(AuditRecord).where(AuditRecord.seq > seq).order_by(AuditRecord.seq)
        return list(session.scalars(stmt))


def add_note(
    client: TestClient, world: World, headers: dict[str, str], user: str = "alice"
) -> httpx.Response:
    return client.post(
        "/api/v1/actions/customer.add_note",
        headers={**headers, **world.auth(user)},
        json={"target": f"customer:{world.customer()}", "payload": {"text": "hi"}, "reason": "r"},
    )


def lines_of(logs: Logs, client_request_id: str) -> list[dict[str, Any]]:
    """The log lines of the request that sent `client_request_id` as its X-Request-ID."""
    return [line for line in logs() if line.get("client_request_id") == client_request_id]


def returned_trace(response: httpx.Response) -> tuple[str, str]:
    parent = parse_traceparent(response.headers["traceresponse"])
    assert parent is not None, response.headers["traceresponse"]
    return parent.trace_id, parent.span_id


def test_a_valid_traceparent_reaches_the_audit_record_and_every_log_line(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    seq = max_seq(db)
    response = add_note(client, world, {"traceparent": TRACEPARENT, "X-Request-ID": "traced-1"})

    assert response.status_code == 200, response.text
    [row] = audit_since(db, seq)
    assert row.trace_id == TRACE  # written in the worker thread
    trace_id, span_id = returned_trace(response)
    assert (trace_id, span_id != PARENT_SPAN) == (TRACE, True)
    lines = lines_of(logs, "traced-1")
    # "action" is logged in the worker thread, "http_request" by the middleware.
    assert {"action", "http_request"} <= {line["event"] for line in lines}
    assert all(line["trace_id"] == TRACE for line in lines), lines
    assert all(line["span_id"] == span_id for line in lines), lines


def test_refusals_carry_the_trace_too(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    seq = max_seq(db)
    forbidden = add_note(client, world, {"traceparent": TRACEPARENT}, user="audrey")
    unauthenticated = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"traceparent": TRACEPARENT, "Authorization": "Bearer nope"},
        json={},
    )

    assert (forbidden.status_code, unauthenticated.status_code) == (403, 401)
    rows = audit_since(db, seq)
    assert [(r.result, r.trace_id) for r in rows] == [("denied", TRACE), ("denied", TRACE)]


@pytest.mark.parametrize(
    "header",
    [
        f"00-{TRACE.upper()}-{PARENT_SPAN}-01",
        f"ff-{TRACE}-{PARENT_SPAN}-01",
        f"00-{'0' * 32}-{PARENT_SPAN}-01",
        "00-not-a-trace",
    ],
)
def test_a_malformed_traceparent_is_replaced(
    client: TestClient, db: Database, world: World, logs: Logs, header: str
) -> None:
    seq = max_seq(db)
    response = add_note(client, world, {"traceparent": header, "X-Request-ID": "bad-trace"})

    assert response.status_code == 200, response.text
    trace_id, _span = returned_trace(response)
    assert is_trace_id(trace_id)
    assert trace_id not in (TRACE, TRACE.upper())
    [row] = audit_since(db, seq)
    assert row.trace_id == trace_id
    assert {line["trace_id"] for line in lines_of(logs, "bad-trace")} == {trace_id}


def test_without_a_traceparent_each_request_gets_a_new_trace(
    client: TestClient, db: Database, world: World
) -> None:
    seq = max_seq(db)
    first = add_note(client, world, {})
    second = add_note(client, world, {})

    rows = audit_since(db, seq)
    traces = [returned_trace(first)[0], returned_trace(second)[0]]
    assert [row.trace_id for row in rows] == traces
    assert all(is_trace_id(t) for t in traces)
    assert traces[0] != traces[1]


def test_an_approvals_execution_carries_the_approvers_trace(
    client: TestClient, db: Database, world: World
) -> None:
    requester_trace = "11111111111111111111111111111111"
    approver_trace = "22222222222222222222222222222222"
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
    seq = max_seq(db)
    asked = client.post(
        "/api/v1/actions/account.unblock",
        json={"target": f"account:{account}", "payload": {}, "reason": "verified by phone"},
        headers=world.auth("rita") | {"traceparent": f"00-{requester_trace}-{PARENT_SPAN}-01"},
    )
    assert asked.status_code == 202, asked.text
    approved = client.post(
        f"/api/v1/approvals/{asked.json()['approval_id']}/approve",
        json={"comment": "checked"},
        headers=world.auth("olga") | {"traceparent": f"00-{approver_trace}-{PARENT_SPAN}-01"},
    )
    assert approved.status_code == 200, approved.text

    rows = [
        (r.result, r.execution_request_id is not None, r.trace_id) for r in audit_since(db, seq)
    ]
    assert rows == [
        ("approval_requested", False, requester_trace),
        ("approved", False, approver_trace),
        ("succeeded", True, approver_trace),
    ]


def test_the_startup_record_has_a_trace(client: TestClient, db: Database) -> None:
    with db.reading() as session:
        started = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "system.start")
        ).all()
    assert started
    assert all(row.trace_id is not None and is_trace_id(row.trace_id) for row in started)
