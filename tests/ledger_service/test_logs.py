"""Every log line of a request carries the service, the caller's request ID and trace ID."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from opsgate.db.engine import Database
from tests.conftest import World
from tests.ledger_service.conftest import SECRET, post_action, reversal, reversible_payment

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def test_lines_carry_request_and_trace_ids_and_no_secret_or_body(
    ledger: TestClient,
    ledger_db: Database,
    world: World,
    logs: Callable[[], list[dict[str, Any]]],
) -> None:
    payment = reversible_payment(ledger_db)
    body = reversal(world, payment.id, 100, reason="Secretive reason text")
    headers = {"traceparent": TRACEPARENT}
    sent = {"key": "logged", "request_id": "req-from-opsgate", "extra": headers}

    answer = post_action(ledger, body, **sent)
    replay = post_action(ledger, body, **sent)

    assert answer.status_code == replay.status_code == 200
    # The ledger mints its own request ID and keeps opsgate's beside it.
    assert answer.headers["X-Request-ID"].startswith("req_")
    assert answer.headers["X-Request-ID"] != "req-from-opsgate"
    lines = [line for line in logs() if line.get("service") == "ledger"]
    assert lines
    assert all(line["client_request_id"] == "req-from-opsgate" for line in lines)
    assert all(line["trace_id"] == TRACE_ID for line in lines)
    access = [line for line in lines if line["event"] == "http_request"]
    assert [line["status"] for line in access] == [200, 200]
    operations = [line for line in lines if line["event"] == "operation"]
    assert [(op["outcome"], op["replayed"]) for op in operations] == [
        ("succeeded", False),
        ("replayed", True),
    ]
    assert (
        operations[0]
        | {
            "action": "payment.reverse",
            "target": f"payment:{payment.id}",
            "key": "logged",
        }
        == operations[0]
    )
    text = json.dumps(lines)
    assert SECRET not in text
    assert "Secretive reason text" not in text


def test_a_request_without_trace_context_gets_a_new_trace(
    ledger: TestClient, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    ledger.get("/healthz", headers={"X-Request-ID": "req-health"})

    [line] = [line for line in logs() if line.get("client_request_id") == "req-health"]
    assert line["service"] == "ledger"
    assert len(line["trace_id"]) == 32
    assert line["trace_id"] != TRACE_ID
