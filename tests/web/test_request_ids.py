"""Request IDs: a well-formed `X-Request-ID` is honoured, anything else is replaced, and the ID
in use is returned everywhere: the response header, the body, the audit record and the logs."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from tests.conftest import World

Logs = Callable[[], list[dict[str, Any]]]
WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,128}")
ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
# Printable ASCII that may travel in a header but is outside the request-ID alphabet.
BAD_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in ID_CHARS) + " "

well_formed_ids = st.text(alphabet=ID_CHARS, min_size=1, max_size=128)
malformed_ids = st.one_of(
    st.text(alphabet=ID_CHARS, min_size=129, max_size=300),
    st.builds(
        lambda head, bad, tail: head + bad + tail,
        st.text(alphabet=ID_CHARS, max_size=60),
        st.text(alphabet=BAD_CHARS, min_size=1, max_size=5),
        st.text(alphabet=ID_CHARS, max_size=60),
    ).map(lambda s: s.strip() or s),
).filter(lambda s: s.strip() == s and not WELL_FORMED.fullmatch(s))

FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def max_seq(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.max(AuditRecord.seq))) or 0)


def audit_since(db: Database, seq: int) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord).where(AuditRecord.seq > seq).order_by(AuditRecord.seq)
            )
        )


def add_note(
    client: TestClient, world: World, headers: dict[str, Any], user: str = "alice"
) -> httpx.Response:
    return client.post(
        "/api/v1/actions/customer.add_note",
        headers={**headers, **world.auth(user)},
        json={"target": f"customer:{world.customer()}", "payload": {"text": "hi"}, "reason": "r"},
    )


def events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [line for line in lines if line.get("event") == name]


def assert_used_everywhere(
    response: httpx.Response,
    request_id: str,
    db: Database,
    seq_before: int,
    new_logs: list[dict[str, Any]],
) -> None:
    """The response, the single audit record and both log events all carry `request_id`."""
    assert response.headers["x-request-id"] == request_id
    assert response.json()["request_id"] == request_id
    [row] = audit_since(db, seq_before)
    assert row.request_id == request_id
    [action_line] = events(new_logs, "action")
    [http_line] = events(new_logs, "http_request")
    assert action_line["request_id"] == request_id
    assert http_line["request_id"] == request_id
    assert http_line["status"] == response.status_code


# --- honoured --------------------------------------------------------------------------------


def test_well_formed_id_is_honoured_on_success(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    request_id = "Ticket-4711_retry.2"
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": request_id})

    assert response.status_code == 200, response.text
    assert_used_everywhere(response, request_id, db, seq, logs())
    assert audit_since(db, seq)[0].result == "succeeded"


def test_well_formed_id_is_honoured_on_refusal(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    request_id = "a" * 128  # the longest allowed
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": request_id}, user="audrey")

    assert response.status_code == 403, response.text
    assert_used_everywhere(response, request_id, db, seq, logs())
    assert audit_since(db, seq)[0].result == "denied"


def test_well_formed_id_is_honoured_when_unauthenticated(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    seq = max_seq(db)
    response = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"X-Request-ID": "no-token-1"},
        json={"target": f"customer:{world.customer()}", "payload": {"text": "x"}, "reason": "r"},
    )
    assert response.status_code == 401
    assert_used_everywhere(response, "no-token-1", db, seq, logs())


def test_request_id_is_returned_on_reads_and_routing_errors(
    client: TestClient, world: World, logs: Logs
) -> None:
    for method, path in [
        ("GET", "/api/v1/healthz"),
        ("GET", "/api/v1/actions"),
        ("GET", "/api/v1/nowhere"),
        ("DELETE", "/api/v1/actions"),
    ]:
        response = client.request(
            method, path, headers={"X-Request-ID": "read-1", **world.auth("alice")}
        )
        assert response.headers["x-request-id"] == "read-1", path
        assert response.json()["request_id"] == "read-1", path
    http_lines = events(logs(), "http_request")
    assert [line["request_id"] for line in http_lines] == ["read-1"] * 4


@FUZZ
@given(request_id=well_formed_ids)
def test_any_well_formed_id_is_honoured(
    client: TestClient, db: Database, world: World, logs: Logs, request_id: str
) -> None:
    seen = len(logs())
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": request_id})

    assert response.status_code == 200, response.text
    assert_used_everywhere(response, request_id, db, seq, logs()[seen:])


# --- replaced --------------------------------------------------------------------------------


def assert_replaced(
    response: httpx.Response,
    sent: str | bytes,
    db: Database,
    seq_before: int,
    new_logs: list[dict[str, Any]],
) -> str:
    generated = response.headers["x-request-id"]
    assert generated != (sent.decode("latin-1") if isinstance(sent, bytes) else sent)
    assert WELL_FORMED.fullmatch(generated), generated
    assert_used_everywhere(response, generated, db, seq_before, new_logs)
    return generated


def test_malformed_ids_are_replaced_everywhere(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    cases: list[str | bytes] = [
        "",
        "a" * 129,
        "has space",
        "semi;colon",
        "slash/inside",
        "<script>",
        "caf\u00e9".encode(),
        "line\tbreak",
    ]
    for sent in cases:
        seen = len(logs())
        seq = max_seq(db)
        response = add_note(client, world, {"X-Request-ID": sent})
        assert response.status_code == 200, (sent, response.text)
        assert_replaced(response, sent, db, seq, logs()[seen:])


def test_malformed_id_is_replaced_on_error_too(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    seq = max_seq(db)
    response = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"X-Request-ID": "bad id!", **world.auth("alice")},
        content=b"{not json",
    )
    assert response.status_code == 422
    generated = assert_replaced(response, "bad id!", db, seq, logs())
    assert audit_since(db, seq)[0].request_id == generated


@FUZZ
@given(sent=malformed_ids)
@example(sent="x" * 129)
def test_any_malformed_id_is_replaced(
    client: TestClient, db: Database, world: World, logs: Logs, sent: str
) -> None:
    seen = len(logs())
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": sent})

    assert response.status_code == 200, response.text
    assert_replaced(response, sent, db, seq, logs()[seen:])


def test_generated_ids_differ_between_requests(
    client: TestClient, db: Database, world: World
) -> None:
    seq = max_seq(db)
    first = add_note(client, world, {})
    second = add_note(client, world, {})
    third = add_note(client, world, {"X-Request-ID": "bad id"})

    ids = [r.headers["x-request-id"] for r in (first, second, third)]
    assert len(set(ids)) == 3
    assert all(WELL_FORMED.fullmatch(i) for i in ids)
    assert [r.request_id for r in audit_since(db, seq)] == ids
    assert [r.json()["request_id"] for r in (first, second, third)] == ids
