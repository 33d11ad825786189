"""GET /v1/operations/{key}: what became of a key, for `opsgate reconcile`."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from opsgate.db.engine import Database
from tests.conftest import World
from tests.ledger_service.conftest import (
    assert_signed,
    assert_unsigned,
    get_operation,
    post_action,
    reversal,
    reversible_payment,
)


def test_a_completed_key_answers_with_the_stored_answer(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    first = post_action(ledger, reversal(world, payment.id, 100), key="op-1")

    answer = get_operation(ledger, "op-1")

    assert answer.status_code == 200
    assert answer.json() == {"status": "completed", "http_status": 200, "response": first.json()}
    assert_signed(answer)


def test_a_refusal_is_completed_too(ledger: TestClient, ledger_db: Database, world: World) -> None:
    payment = reversible_payment(ledger_db)
    refused = post_action(ledger, reversal(world, payment.id, payment.amount_minor + 1), "op-2")

    answer = get_operation(ledger, "op-2")

    assert answer.json() == {"status": "completed", "http_status": 409, "response": refused.json()}


def test_an_unknown_key_is_404(ledger: TestClient) -> None:
    answer = get_operation(ledger, "never-seen")

    assert answer.status_code == 404
    assert answer.json()["code"] == "operation_not_found"
    assert_signed(answer)


def test_the_lookup_needs_a_signature(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    post_action(ledger, reversal(world, payment.id, 100), key="op-3")

    unsigned = ledger.get("/v1/operations/op-3")
    stale = get_operation(ledger, "op-3", at=time.time() - 600)

    assert unsigned.status_code == stale.status_code == 401
    assert "response" not in unsigned.json()
    assert_unsigned(unsigned)
    assert_unsigned(stale)
