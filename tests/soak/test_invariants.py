"""The soak's invariant checker finds each break it is there to find (a checker that cannot
fail proves nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest
from opsgate_demo.ledger_service.models import LedgerOperation
from opsgate_demo.models import Account, Payment
from tests.conftest import TestDatabase, World
from tests.remote_stack import init_ledger, ledger_database
from tests.soak.invariants import check


@pytest.fixture
def ledger_url(test_db: TestDatabase, tmp_path: Path) -> Iterator[str]:
    with ledger_database(test_db.backend, tmp_path) as url:
        init_ledger(test_db.url, url)
        yield url


def _write(url: str, statement: object) -> None:
    db = Database(url)
    try:
        with db.writing() as session:
            session.execute(statement)  # type: ignore[call-overload]
            session.commit()
    finally:
        db.dispose()


def test_a_quiet_system_passes(test_db: TestDatabase, ledger_url: str) -> None:
    assert check(test_db.url, ledger_url, [], notes_before=_notes(test_db.url)).broken == []


def test_a_ledger_effect_without_its_audit_record_is_found(
    test_db: TestDatabase, ledger_url: str
) -> None:
    db = Database(ledger_url)
    try:
        with db.writing() as session:
            session.add(
                LedgerOperation(
                    key="og1_forged",
                    request_hash="0" * 64,
                    action="payment.reverse",
                    target="payment:pay_x",
                    request_id="req_forged",
                    status="completed",
                    http_status=200,
                    response={},
                    created_at=datetime.now(UTC),
                    completed_at=datetime.now(UTC),
                )
            )
            session.commit()
    finally:
        db.dispose()
    broken = check(test_db.url, ledger_url, [], notes_before=_notes(test_db.url)).broken
    assert any("og1_forged has no backend call" in line for line in broken), broken


def test_money_half_moved_in_the_ledger_is_found(test_db: TestDatabase, ledger_url: str) -> None:
    db = Database(ledger_url)
    try:
        with db.reading() as session:
            account_id = session.scalars(select(Account.id).limit(1)).one()
    finally:
        db.dispose()
    _write(ledger_url, update(Account).where(Account.id == account_id).values(balance_minor=1))
    broken = check(test_db.url, ledger_url, [], notes_before=_notes(test_db.url)).broken
    assert any(line.startswith("ledger inconsistent") for line in broken), broken


def test_a_read_model_that_disagrees_with_the_ledger_is_found(
    test_db: TestDatabase, ledger_url: str
) -> None:
    db = Database(test_db.url)
    try:
        with db.reading() as session:
            payment_id = session.scalars(select(Payment.id).limit(1)).one()
    finally:
        db.dispose()
    _write(test_db.url, update(Payment).where(Payment.id == payment_id).values(reversed_minor=7))
    broken = check(test_db.url, ledger_url, [], notes_before=_notes(test_db.url)).broken
    assert any(f"payment {payment_id}" in line for line in broken), broken


def test_a_stranded_approval_is_found(
    test_db: TestDatabase, ledger_url: str, client: TestClient, world: World
) -> None:
    held = client.post(
        "/api/v1/actions/account.adjust_balance",
        json={
            "target": f"account:{world.account(0)}",
            "payload": {"amount_minor": 500, "memo": "checker test"},
            "reason": "checker test",
        },
        headers=world.auth("olga") | {"Idempotency-Key": "checker-stranded"},
    )
    assert held.status_code == 202, held.text
    assert check(test_db.url, ledger_url, [], notes_before=_notes(test_db.url)).broken == []
    approval_id = held.json()["approval_id"]
    _write(
        test_db.url,
        update(ApprovalRequest).where(ApprovalRequest.id == approval_id).values(status="approved"),
    )
    broken = check(test_db.url, ledger_url, [], notes_before=_notes(test_db.url)).broken
    assert f"approval {approval_id} stranded approved" in broken, broken


def _notes(url: str) -> int:
    from opsgate_demo.models import Note
    from tests.soak.invariants import count_rows

    return count_rows(url, Note)
