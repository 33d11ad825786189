"""Request IDs: always minted by opsgate and returned everywhere (the response header, the
body, the audit record and the logs). A caller's well-formed `X-Request-ID` is kept beside it as
`client_request_id`, never used as the request ID; a malformed one is ignored."""

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
from opsgate_demo.models import Payment, PaymentReversal
from tests.conftest import World

Logs = Callable[[], list[dict[str, Any]]]
WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,128}")
MINTED = re.compile(r"req_[0-9a-f]{26}")
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


def assert_minted_everywhere(
    response: httpx.Response,
    db: Database,
    seq_before: int,
    new_logs: list[dict[str, Any]],
    client_id: str | None,
) -> str:
    """The response, the single audit record and both log events carry one request ID that
    opsgate minted, and the caller's value (or nothing) as `client_request_id`."""
    request_id = response.headers["x-request-id"]
    assert MINTED.fullmatch(request_id), request_id
    assert request_id != client_id
    assert response.json()["request_id"] == request_id
    [row] = audit_since(db, seq_before)
    assert (row.request_id, row.client_request_id) == (request_id, client_id)
    [action_line] = events(new_logs, "action")
    [http_line] = events(new_logs, "http_request")
    for line in (action_line, http_line):
        assert line["request_id"] == request_id
        assert line.get("client_request_id") == client_id
    assert http_line["status"] == response.status_code
    return request_id


# --- a caller's well-formed value is kept beside ours -----------------------------------------


def test_a_callers_id_is_kept_beside_the_minted_one_on_success(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": "Ticket-4711_retry.2"})

    assert response.status_code == 200, response.text
    assert_minted_everywhere(response, db, seq, logs(), "Ticket-4711_retry.2")
    assert audit_since(db, seq)[0].result == "succeeded"


def test_a_callers_id_is_kept_on_refusal(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    client_id = "a" * 128  # the longest kept
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": client_id}, user="audrey")

    assert response.status_code == 403, response.text
    assert_minted_everywhere(response, db, seq, logs(), client_id)
    assert audit_since(db, seq)[0].result == "denied"


def test_a_callers_id_is_kept_when_unauthenticated(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    seq = max_seq(db)
    response = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"X-Request-ID": "no-token-1"},
        json={"target": f"customer:{world.customer()}", "payload": {"text": "x"}, "reason": "r"},
    )
    assert response.status_code == 401
    assert_minted_everywhere(response, db, seq, logs(), "no-token-1")


def test_request_id_is_minted_on_reads_and_routing_errors(
    client: TestClient, world: World, logs: Logs
) -> None:
    minted = []
    for method, path in [
        ("GET", "/api/v1/healthz"),
        ("GET", "/api/v1/actions"),
        ("GET", "/api/v1/nowhere"),
        ("DELETE", "/api/v1/actions"),
    ]:
        response = client.request(
            method, path, headers={"X-Request-ID": "read-1", **world.auth("alice")}
        )
        assert MINTED.fullmatch(response.headers["x-request-id"]), path
        assert response.json()["request_id"] == response.headers["x-request-id"], path
        minted.append(response.headers["x-request-id"])
    assert len(set(minted)) == 4
    http_lines = events(logs(), "http_request")
    assert [line["request_id"] for line in http_lines] == minted
    assert [line["client_request_id"] for line in http_lines] == ["read-1"] * 4


@FUZZ
@given(client_id=well_formed_ids)
def test_no_callers_id_becomes_the_request_id(
    client: TestClient, db: Database, world: World, logs: Logs, client_id: str
) -> None:
    seen = len(logs())
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": client_id})

    assert response.status_code == 200, response.text
    assert_minted_everywhere(response, db, seq, logs()[seen:], client_id)


def test_one_callers_id_on_two_reversals_of_different_payments(
    client: TestClient, db: Database, world: World
) -> None:
    """Once a 500: the caller's ID became the ledger's unique reference of both reversals."""
    with db.reading() as session:
        payments = list(
            session.scalars(
                select(Payment)
                .where(Payment.amount_minor.between(2_000, 10_000))
                .order_by(Payment.id)
                .limit(2)
            )
        )
    assert len(payments) == 2
    seq = max_seq(db)
    answers = [
        client.post(
            "/api/v1/actions/payment.reverse",
            headers=world.auth("alice") | {"X-Request-ID": "ticket-42", "Idempotency-Key": p.id},
            json={
                "target": f"payment:{p.id}",
                "payload": {"amount_minor": 500, "reason_code": "duplicate_charge"},
                "reason": "charged twice",
            },
        )
        for p in payments
    ]

    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    request_ids = [a.json()["request_id"] for a in answers]
    assert len(set(request_ids)) == 2 and all(MINTED.fullmatch(r) for r in request_ids)
    records = [r for r in audit_since(db, seq) if r.action == "payment.reverse"]
    assert [(r.request_id, r.client_request_id, r.result) for r in records] == [
        (request_ids[0], "ticket-42", "succeeded"),
        (request_ids[1], "ticket-42", "succeeded"),
    ]
    with db.reading() as session:
        references = list(session.scalars(select(PaymentReversal.request_id)))
    assert "ticket-42" not in references


def test_the_audit_api_returns_the_callers_id(
    client: TestClient, db: Database, world: World
) -> None:
    sent = add_note(client, world, {"X-Request-ID": "ticket-43"})
    request_id = sent.headers["x-request-id"]
    response = client.get(
        "/api/v1/audit", params={"request_id": request_id}, headers=world.auth("audrey")
    )
    [item] = response.json()["items"]
    assert (item["request_id"], item["client_request_id"]) == (request_id, "ticket-43")


# --- a malformed value is ignored ------------------------------------------------------------


def test_malformed_ids_are_ignored(
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
        assert_minted_everywhere(response, db, seq, logs()[seen:], None)


def test_malformed_id_is_ignored_on_error_too(
    client: TestClient, db: Database, world: World, logs: Logs
) -> None:
    seq = max_seq(db)
    response = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"X-Request-ID": "bad id!", **world.auth("alice")},
        content=b"{not json",
    )
    assert response.status_code == 422
    assert_minted_everywhere(response, db, seq, logs(), None)


@FUZZ
@given(sent=malformed_ids)
@example(sent="x" * 129)
def test_any_malformed_id_is_ignored(
    client: TestClient, db: Database, world: World, logs: Logs, sent: str
) -> None:
    seen = len(logs())
    seq = max_seq(db)
    response = add_note(client, world, {"X-Request-ID": sent})

    assert response.status_code == 200, response.text
    assert_minted_everywhere(response, db, seq, logs()[seen:], None)


def test_minted_ids_differ_between_requests(client: TestClient, db: Database, world: World) -> None:
    seq = max_seq(db)
    first = add_note(client, world, {})
    second = add_note(client, world, {"X-Request-ID": "same"})
    third = add_note(client, world, {"X-Request-ID": "same"})

    ids = [r.headers["x-request-id"] for r in (first, second, third)]
    assert len(set(ids)) == 3
    assert all(MINTED.fullmatch(i) for i in ids)
    assert [r.request_id for r in audit_since(db, seq)] == ids
    assert [r.json()["request_id"] for r in (first, second, third)] == ids
