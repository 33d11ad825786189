"""Reads of personal data are audited; so are replays and refusals FastAPI makes itself."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate_demo.models import Payment
from tests.conftest import World


def records_for(db: Database, request_id: str) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.client_request_id == request_id)
                .order_by(AuditRecord.seq)
            )
        )


def test_customer_overview_lists_accounts_payments_and_notes(
    client: TestClient, world: World, db: Database
) -> None:
    customer = world.customer(0)
    client.post(
        "/api/v1/actions/customer.add_note",
        json={"target": f"customer:{customer}", "payload": {"text": "called"}, "reason": "r"},
        headers=world.auth("alice"),
    )
    response = client.get(
        f"/api/v1/customers/{customer}", headers=world.auth("alice") | {"X-Request-ID": "ov-1"}
    )
    assert response.status_code == 200
    # The generic record answer (web/records.py) the demo's customer view gives.
    body = response.json()
    assert (body["kind"], body["id"], body["target"]) == (
        "customer",
        customer,
        f"customer:{customer}",
    )
    phone = next(f for f in body["fields"] if f["name"] == "phone")
    assert phone["pii"] and phone["value"].startswith("•")  # masked: full PII is audited
    owned = {a["id"] for a in world.summary.accounts if a["customer_id"] == customer}
    assert {a["Account"] for a in body["sections"]["Accounts"]} == owned
    assert all(p["Account"] in owned for p in body["sections"]["Payments"])
    assert [n["Note"] for n in body["sections"]["Notes"]] == ["called"]
    related = {r["target"]: r["page"] for r in body["related"]}
    assert all(related[f"account:{a}"] == f"/console/accounts/{a}" for a in owned)
    assert (
        client.get(f"/api/v1/records/customer/{customer}", headers=world.auth("alice")).json()[
            "fields"
        ]
        == body["fields"]
    )
    [read] = records_for(db, "ov-1")
    assert (read.action, read.target, read.result) == (
        "records.read",
        f"customer:{customer}",
        "succeeded",
    )
    missing = client.get("/api/v1/customers/cus_nope", headers=world.auth("alice"))
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_search_is_audited_with_a_keyed_hash_of_what_was_asked(
    client: TestClient, world: World, db: Database
) -> None:
    email = str(world.summary.customers[3]["email"])
    client.get(
        "/api/v1/search", params={"q": email}, headers=world.auth("alice") | {"X-Request-ID": "s-1"}
    )
    [row] = records_for(db, "s-1")
    assert row.action == "records.search"
    assert row.parameters is not None
    assert row.parameters["term"]["kind"] == "email"
    assert row.parameters["term"]["length"] == len(email)
    assert len(row.parameters["term"]["hmac_sha256"]) == 64
    assert row.parameters["found"] == {"customers": 1, "accounts": 0, "payments": 0}
    assert email not in str(row.parameters)


def test_a_replay_is_recorded_as_an_attempt(client: TestClient, world: World, db: Database) -> None:
    with db.reading() as session:
        payment = session.scalars(select(Payment).order_by(Payment.id)).first()
        assert payment is not None
    body = {
        "target": f"payment:{payment.id}",
        "payload": {"amount_minor": 100, "reason_code": "goodwill"},
        "reason": "r",
    }
    headers = world.auth("alice") | {"Idempotency-Key": "k1"}
    first = client.post(
        "/api/v1/actions/payment.reverse", json=body, headers=headers | {"X-Request-ID": "a"}
    )
    client.post(
        "/api/v1/actions/payment.reverse", json=body, headers=headers | {"X-Request-ID": "b"}
    )
    [replay] = records_for(db, "b")
    assert replay.result == "replayed"
    assert replay.outcome == {
        "http_status": 200,
        "original_request_id": first.headers["x-request-id"],
    }


def test_parameters_refused_by_the_framework_are_audited(
    client: TestClient, world: World, db: Database
) -> None:
    response = client.get(
        "/api/v1/audit",
        params={"limit": "many"},
        headers=world.auth("audrey") | {"X-Request-ID": "bad-limit"},
    )
    assert response.status_code == 422
    [row] = records_for(db, "bad-limit")
    assert (row.action, row.result, row.error_code) == (
        "http:GET /api/v1/audit",
        "invalid",
        "invalid_payload",
    )
    assert row.actor_id == world.user_ids["audrey"]


def test_a_read_action_keeps_no_replayable_copy_of_what_it_revealed(
    client: TestClient, world: World, db: Database
) -> None:
    from sqlalchemy import func

    from opsgate.db.models import IdempotencyRecord

    body = {"target": f"customer:{world.customer(2)}", "payload": {}, "reason": "verify caller"}
    headers = world.auth("alice") | {"Idempotency-Key": "pii-1"}
    first = client.post("/api/v1/actions/customer.view_pii", json=body, headers=headers)
    again = client.post("/api/v1/actions/customer.view_pii", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert "Idempotent-Replayed" not in again.headers  # each reveal is its own audited read
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
        reveals = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "customer.view_pii")
        ).all()
    assert len(reveals) == 2
    assert all(r.outcome == {"revealed_fields": ["email", "name", "phone"]} for r in reveals)
