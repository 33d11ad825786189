"""POST /v1/actions/{action}: signatures, idempotency keys, payloads, effects, answers."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opsgate.core.integrations.signing import SignatureError, sign_v1
from opsgate.db.engine import Database
from opsgate_demo.ledger_service.app import create_app
from opsgate_demo.ledger_service.models import LedgerOperation
from opsgate_demo.ledger_service.settings import LedgerSettings
from opsgate_demo.models import LedgerTransaction, PaymentReversal
from tests.conftest import World
from tests.domain.test_money import ledger_is_consistent
from tests.ledger_service.conftest import (
    PREVIOUS_SECRET,
    SECRET,
    account_balance,
    assert_signed,
    assert_unsigned,
    call_body,
    payment_row,
    post_action,
    reversal,
    reversible_payment,
    signed_headers,
)

REVERSE = "/v1/actions/payment.reverse"


def reversal_count(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(PaymentReversal)
                .where(PaymentReversal.payment_id == payment_id)
            )
            or 0
        )


def transaction_count(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(LedgerTransaction)) or 0)


def test_reversal_moves_money_once_and_answers_with_the_new_state(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    balance = account_balance(ledger_db, payment.account_id)

    answer = post_action(ledger, reversal(world, payment.id, 100), key="k-1")

    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert "Idempotent-Replayed" not in answer.headers
    assert_signed(answer)
    body = answer.json()
    assert set(body) == {"result", "before", "after", "state"}
    assert body["result"]["payment_id"] == payment.id
    assert body["result"]["amount_minor"] == 100
    assert body["before"]["reversed_minor"] == payment.reversed_minor
    assert body["after"]["reversed_minor"] == payment.reversed_minor + 100
    assert body["after"]["version"] == body["before"]["version"] + 1
    row = payment_row(ledger_db, payment.id)
    assert body["state"][f"payment:{payment.id}"] == body["after"]
    account_state = body["state"][f"account:{payment.account_id}"]
    assert account_state["balance_minor"] == account_balance(ledger_db, payment.account_id)
    assert account_state["balance_minor"] in (balance - 100, balance + 100)
    assert row.reversed_minor == payment.reversed_minor + 100
    assert reversal_count(ledger_db, payment.id) == 1
    ledger_is_consistent(ledger_db)


def test_adjustment_answers_with_the_account_state(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    account = reversible_payment(ledger_db).account_id
    balance = account_balance(ledger_db, account)
    body = call_body(
        world, "account.adjust_balance", f"account:{account}", {"amount_minor": -250, "memo": "fee"}
    )

    answer = post_action(ledger, body, key="adj-1")

    assert answer.status_code == 200, answer.text
    assert answer.json()["result"]["balance_minor"] == balance - 250
    assert answer.json()["state"] == {f"account:{account}": answer.json()["after"]}
    assert answer.json()["after"]["balance_minor"] == balance - 250
    assert account_balance(ledger_db, account) == balance - 250
    ledger_is_consistent(ledger_db)


def test_bad_missing_or_old_signatures_are_refused_and_change_nothing(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    body = reversal(world, payment.id, 100)
    raw = json.dumps(body).encode()
    before = transaction_count(ledger_db)
    attempts = {
        "unsigned": {"Content-Type": "application/json", "Idempotency-Key": "s-1"},
        "wrong secret": signed_headers("POST", REVERSE, raw, key="s-2", secret="x" * 40),
        "too old": signed_headers("POST", REVERSE, raw, key="s-3", at=time.time() - 301),
        "other path": signed_headers("POST", "/v1/actions/x", raw, key="s-4"),
        "other body": signed_headers("POST", REVERSE, raw + b" ", key="s-5"),
        "v1": {"Content-Type": "application/json", "Idempotency-Key": "s-6"}
        | sign_v1(SECRET, "POST", REVERSE, raw, time.time()),
    }
    reasons = {}
    for name, headers in attempts.items():
        answer = ledger.post(REVERSE, content=raw, headers=headers)
        assert answer.status_code == 401, name
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "unauthenticated"
        assert_unsigned(answer)
        reasons[name] = answer.json()["detail"]

    assert reasons["unsigned"] == "the request is not signed"
    assert reasons["v1"] == "v1 signatures are no longer accepted; sign with v2"
    assert reasons["too old"] == "the signature timestamp is outside the accepted window"
    assert reasons["wrong secret"] == reasons["other body"] == "the signature does not match"
    assert transaction_count(ledger_db) == before
    assert payment_row(ledger_db, payment.id).reversed_minor == payment.reversed_minor
    # The keys were never claimed: a signed request may use them.
    assert post_action(ledger, body, key="s-2").status_code == 200


@pytest.mark.parametrize(
    ("header", "value"),
    [("Idempotency-Key", "captured-2"), ("X-Request-ID", "req-someone-else")],
    ids=["new idempotency key", "new request ID"],
)
def test_a_captured_request_replayed_under_another_key_or_request_id_is_refused(
    ledger: TestClient, ledger_db: Database, world: World, header: str, value: str
) -> None:
    payment = reversible_payment(ledger_db)
    raw = json.dumps(reversal(world, payment.id, 100)).encode()
    captured = signed_headers("POST", REVERSE, raw, key="captured-1", request_id="req-captured")
    assert ledger.post(REVERSE, content=raw, headers=captured).status_code == 200

    replayed = ledger.post(REVERSE, content=raw, headers=captured | {header: value})

    assert replayed.status_code == 401
    assert replayed.json()["code"] == "unauthenticated"
    assert reversal_count(ledger_db, payment.id) == 1
    with ledger_db.reading() as session:
        assert session.get(LedgerOperation, "captured-2") is None


def test_the_previous_secret_is_accepted_during_a_rotation(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)

    answer = post_action(ledger, reversal(world, payment.id, 100), "rot-1", secret=PREVIOUS_SECRET)

    assert answer.status_code == 200, answer.text
    # Signed with the secret the caller holds, the only one it can check.
    assert_signed(answer, secret=PREVIOUS_SECRET)
    with pytest.raises(SignatureError):
        assert_signed(answer)


def test_a_missing_key_is_refused_before_anything_runs(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)

    answer = post_action(ledger, reversal(world, payment.id, 100), key=None)

    assert answer.status_code == 400
    assert answer.json()["code"] == "idempotency_key_required"
    assert reversal_count(ledger_db, payment.id) == 0


def test_same_key_twice_has_one_effect_and_replays_the_first_answer(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    body = reversal(world, payment.id, 100)

    first = post_action(ledger, body, key="twice")
    # A retry of the same action may carry a new request ID: still the same action.
    second = post_action(ledger, body | {"request_id": "req-ledger-retry"}, key="twice")

    assert first.status_code == second.status_code == 200
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert_signed(second)
    assert reversal_count(ledger_db, payment.id) == 1
    assert payment_row(ledger_db, payment.id).reversed_minor == payment.reversed_minor + 100


def test_same_key_for_another_request_is_a_mismatch(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    assert post_action(ledger, reversal(world, payment.id, 100), key="reused").status_code == 200

    answer = post_action(ledger, reversal(world, payment.id, 200), key="reused")

    assert answer.status_code == 422
    assert answer.json()["code"] == "idempotency_mismatch"
    assert payment_row(ledger_db, payment.id).reversed_minor == payment.reversed_minor + 100


def test_a_domain_refusal_is_a_stored_409_replayed_on_retry(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    body = reversal(world, payment.id, payment.amount_minor + 1)

    first = post_action(ledger, body, key="too-much")
    second = post_action(ledger, body, key="too-much")

    assert first.status_code == 409
    assert first.headers["content-type"] == "application/problem+json"
    assert first.json()["code"] == "reversal_exceeds_payment"
    assert str(payment.amount_minor) in first.json()["detail"]
    assert second.status_code == 409
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.content == first.content
    assert reversal_count(ledger_db, payment.id) == 0
    ledger_is_consistent(ledger_db)


def test_an_unknown_target_is_a_stored_404(ledger: TestClient, world: World) -> None:
    body = reversal(world, "pay_doesnotexist", 100)

    first = post_action(ledger, body, key="ghost")
    second = post_action(ledger, body, key="ghost")

    assert first.status_code == 404
    assert first.json()["code"] == "target_not_found"
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.content == first.content


def test_invalid_calls_are_422_and_do_not_take_the_key(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    good = reversal(world, payment.id, 100)
    bad_payloads = [
        good | {"payload": {"amount_minor": 0, "reason_code": "customer_dispute"}},
        good | {"payload": {"amount_minor": 100, "reason_code": "whim"}},
        good | {"payload": {"amount_minor": 100, "reason_code": "fraud", "extra": 1}},
        good | {"target": f"account:{payment.account_id}"},
        good | {"target": "nonsense"},
        good | {"unexpected": True},
        {key: value for key, value in good.items() if key != "actor"},
    ]
    for bad in bad_payloads:
        answer = post_action(ledger, bad, key="kept")
        assert answer.status_code == 422, bad
        assert answer.json()["code"] == "invalid_payload"
    mismatched_action = post_action(ledger, good | {"action": "account.adjust_balance"}, "kept")
    assert mismatched_action.status_code == 422

    assert reversal_count(ledger_db, payment.id) == 0
    assert post_action(ledger, good, key="kept").status_code == 200


def test_an_unknown_action_is_a_404(ledger: TestClient, world: World) -> None:
    body = call_body(world, "account.block", "account:acc_x", {"reason_code": "fraud"})

    answer = post_action(ledger, body, key="blk")

    assert answer.status_code == 404
    assert answer.json()["code"] == "unknown_action"


def test_an_approved_execution_is_recorded_under_its_execution_request_id(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    body = reversal(world, payment.id, 100) | {
        "approval_id": "apr_1",
        "execution_request_id": "req-exec-1",
    }

    answer = post_action(ledger, body, key="approved")

    assert answer.status_code == 200, answer.text
    with ledger_db.reading() as session:
        row = session.scalars(
            select(PaymentReversal).where(PaymentReversal.payment_id == payment.id)
        ).one()
        txn = session.get(LedgerTransaction, row.ledger_transaction_id)
        assert row.request_id == "req-exec-1"
        assert txn is not None
        assert txn.reference == "reversal:req-exec-1"


def test_unknown_routes_and_health_answer_unsigned(ledger: TestClient) -> None:
    missing = ledger.get("/v1/nothing", headers=signed_headers("GET", "/v1/nothing", b""))
    health = ledger.get("/healthz")

    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    assert_unsigned(missing)
    assert health.json() == {"status": "ok"}
    assert_unsigned(health)


def test_during_a_migration_window_a_v1_request_is_accepted_and_answered_in_v1(
    ledger_settings: LedgerSettings, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    raw = json.dumps(reversal(world, payment.id, 100)).encode()
    legacy = {"Content-Type": "application/json", "Idempotency-Key": "legacy-1"}
    legacy |= sign_v1(SECRET, "POST", REVERSE, raw, time.time())
    app = create_app(
        ledger_settings.model_copy(update={"accept_signature_v1": True}), configure_logs=False
    )

    with TestClient(app) as client:
        answer = client.post(REVERSE, content=raw, headers=legacy)
        current = post_action(
            client, reversal(world, payment.id, 100, request_id="req-2"), key="v2-1"
        )

    assert answer.status_code == 200, answer.text
    at = float(answer.headers["X-Opsgate-Timestamp"])
    expected = sign_v1(SECRET, "POST", REVERSE, answer.content, at)
    assert answer.headers["X-Opsgate-Signature"] == expected["X-Opsgate-Signature"]
    # A v2 request is still answered in v2, bound to it.
    assert current.status_code == 200
    assert_signed(current)


def test_a_second_effect_under_one_request_id_is_refused_by_the_ledger(
    ledger: TestClient, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    body = reversal(world, payment.id, 100, request_id="req-once")
    assert post_action(ledger, body, key="first-key").status_code == 200

    answer = post_action(ledger, body, key="second-key")

    assert answer.status_code == 409
    assert answer.json()["code"] == "duplicate_effect"
    assert reversal_count(ledger_db, payment.id) == 1
    ledger_is_consistent(ledger_db)


class _SlowClock:
    """Each reading is 200 seconds after the previous one: the request's locks 'take' long."""

    def __init__(self, start: float) -> None:
        self._at = start - 200

    def now(self) -> datetime:
        self._at += 200
        return datetime.fromtimestamp(self._at, UTC)


def test_nothing_commits_after_the_signature_window_closes(
    ledger_settings: LedgerSettings, ledger_db: Database, world: World
) -> None:
    payment = reversible_payment(ledger_db)
    started = time.time()
    app = create_app(ledger_settings, clock=_SlowClock(started), configure_logs=False)
    body = reversal(world, payment.id, 100)

    with TestClient(app) as client:
        answer = post_action(client, body, key="late", at=started)

    assert answer.status_code == 503
    assert answer.json()["code"] == "unavailable"
    assert reversal_count(ledger_db, payment.id) == 0
    with ledger_db.reading() as session:
        assert session.get(LedgerOperation, "late") is None  # the key was not taken either
