"""Idempotency-Key on POST /api/v1/actions/{name} (IETF draft semantics)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opsgate.core.clock import FrozenClock
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, IdempotencyRecord
from opsgate.web.services import Services
from opsgate_demo.models import Payment, PaymentReversal
from tests.conftest import TestDatabase, World
from tests.servers import start_server
from tests.step_ups import step_up_header


def small_payment(db: Database) -> Payment:
    with db.reading() as session:
        payment = session.scalars(
            select(Payment).where(Payment.amount_minor.between(2_000, 10_000)).order_by(Payment.id)
        ).first()
        assert payment is not None
        return payment


def body(payment_id: str, amount: int = 500) -> dict[str, Any]:
    return {
        "target": f"payment:{payment_id}",
        "payload": {"amount_minor": amount, "reason_code": "duplicate_charge"},
        "reason": "charged twice",
    }


def reversals(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        return int(
            session.scalar(select(func.count()).where(PaymentReversal.payment_id == payment_id))
            or 0
        )


def test_money_moving_action_requires_a_key(client: TestClient, world: World, db: Database) -> None:
    payment = small_payment(db)
    for headers in ({}, {"Idempotency-Key": ""}, {"Idempotency-Key": "x" * 256}):
        response = client.post(
            "/api/v1/actions/payment.reverse",
            json=body(payment.id),
            headers=world.auth("alice") | headers,
        )
        assert response.status_code == 400
        assert response.json()["code"] == "idempotency_key_required"
    assert reversals(db, payment.id) == 0


def test_same_key_same_request_replays_the_stored_answer(
    client: TestClient, world: World, db: Database
) -> None:
    payment = small_payment(db)
    headers = world.auth("alice") | {"Idempotency-Key": "retry-1"}
    first = client.post("/api/v1/actions/payment.reverse", json=body(payment.id), headers=headers)
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/api/v1/actions/payment.reverse", json=body(payment.id), headers=headers)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert reversals(db, payment.id) == 1


def test_key_is_scoped_to_the_actor(client: TestClient, world: World, db: Database) -> None:
    payment = small_payment(db)
    for username in ("alice", "bob"):
        response = client.post(
            "/api/v1/actions/payment.reverse",
            json=body(payment.id, 100),
            headers=world.auth(username) | {"Idempotency-Key": "shared"},
        )
        assert response.status_code == 200
        assert "Idempotent-Replayed" not in response.headers
    assert reversals(db, payment.id) == 2


def test_same_key_different_request_is_a_mismatch(
    client: TestClient, world: World, db: Database
) -> None:
    payment = small_payment(db)
    headers = world.auth("alice") | {"Idempotency-Key": "k-mismatch"}
    client.post("/api/v1/actions/payment.reverse", json=body(payment.id, 100), headers=headers)
    other = client.post(
        "/api/v1/actions/payment.reverse", json=body(payment.id, 200), headers=headers
    )
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_mismatch"
    assert reversals(db, payment.id) == 1


def test_domain_refusal_is_stored_and_replayed(
    client: TestClient, world: World, db: Database
) -> None:
    payment = small_payment(db)
    headers = world.auth("alice") | {"Idempotency-Key": "too-much"}
    too_much = body(payment.id, payment.amount_minor + 1)
    first = client.post("/api/v1/actions/payment.reverse", json=too_much, headers=headers)
    assert (first.status_code, first.json()["code"]) == (409, "domain_rejected")
    again = client.post("/api/v1/actions/payment.reverse", json=too_much, headers=headers)
    assert again.status_code == 409
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json() == first.json()


def test_validation_error_does_not_burn_the_key(
    client: TestClient, world: World, db: Database
) -> None:
    payment = small_payment(db)
    headers = world.auth("alice") | {"Idempotency-Key": "fix-and-retry"}
    bad = client.post(
        "/api/v1/actions/payment.reverse",
        json={"target": f"payment:{payment.id}", "payload": {"amount_minor": -5}, "reason": "x"},
        headers=headers,
    )
    assert bad.status_code == 422
    good = client.post("/api/v1/actions/payment.reverse", json=body(payment.id), headers=headers)
    assert good.status_code == 200
    assert "Idempotent-Replayed" not in good.headers


def test_key_that_opened_an_approval_replays_it_and_executes_once(
    client: TestClient, world: World, db: Database
) -> None:
    with db.reading() as session:
        payment = session.scalars(
            select(Payment).where(Payment.amount_minor > 30_000).order_by(Payment.id)
        ).first()
        assert payment is not None
    headers = world.auth("alice") | {"Idempotency-Key": "gated"}
    first = client.post(
        "/api/v1/actions/payment.reverse", json=body(payment.id, 20_000), headers=headers
    )
    assert first.status_code == 202
    again = client.post(
        "/api/v1/actions/payment.reverse", json=body(payment.id, 20_000), headers=headers
    )
    assert again.status_code == 202
    assert again.json()["approval_id"] == first.json()["approval_id"]
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(ApprovalRequest)) == 1
    approval_id = first.json()["approval_id"]
    approved = client.post(
        f"/api/v1/approvals/{approval_id}/approve",
        headers=world.auth("rita") | step_up_header(db, world.tokens["rita"]),
    )
    assert approved.json()["status"] == "succeeded"
    third = client.post(
        "/api/v1/actions/payment.reverse", json=body(payment.id, 20_000), headers=headers
    )
    assert third.json()["approval_id"] == approval_id
    assert reversals(db, payment.id) == 1


def test_answers_expire_after_retention_and_are_pruned(
    client: TestClient, world: World, db: Database, services: Services, clock: FrozenClock
) -> None:
    payment = small_payment(db)
    headers = world.auth("alice") | {"Idempotency-Key": "old"}
    client.post("/api/v1/actions/payment.reverse", json=body(payment.id, 100), headers=headers)
    clock.advance(timedelta(hours=24, seconds=1))
    assert services.gateway.idempotency.prune(clock.now()) == 1
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyRecord)) == 0
    fresh = client.post(
        "/api/v1/actions/payment.reverse", json=body(payment.id, 100), headers=headers
    )
    assert "Idempotent-Replayed" not in fresh.headers
    assert reversals(db, payment.id) == 2


def test_replay_survives_a_server_restart(test_db: TestDatabase, tmp_path: Path) -> None:
    world = test_db.world
    db = Database(test_db.url)
    payment = small_payment(db)
    db.dispose()
    headers = world.auth("alice") | {"Idempotency-Key": "across-restart"}
    server = start_server(test_db.url, tmp_path / "first.log")
    try:
        first = httpx.post(
            f"{server.base_url}/api/v1/actions/payment.reverse",
            json=body(payment.id),
            headers=headers,
        )
    finally:
        server.stop()
    assert first.status_code == 200
    restarted = start_server(test_db.url, tmp_path / "second.log")
    try:
        again = httpx.post(
            f"{restarted.base_url}/api/v1/actions/payment.reverse",
            json=body(payment.id),
            headers=headers,
        )
    finally:
        restarted.stop()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
