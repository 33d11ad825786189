"""Fixtures of the ledger service: its own database per test, initialised from the test's
seeded opsgate database, a client, and signed requests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from opsgate.core.integrations import signing
from opsgate.db.engine import Database
from opsgate_demo.ledger_service.app import create_app
from opsgate_demo.ledger_service.bootstrap import initialise
from opsgate_demo.ledger_service.settings import LedgerSettings
from opsgate_demo.models import Account, AccountStatus, Payment, PaymentStatus
from tests.conftest import RUN_ID, TestDatabase, World, _pg_execute, _pg_url_for

SECRET = "ledger-test-secret-0123456789abcdef"
PREVIOUS_SECRET = "ledger-previous-secret-0123456789abcdef"

_counter = 0


@pytest.fixture
def ledger_url(test_db: TestDatabase, tmp_path: Path) -> Iterator[str]:
    """The ledger's own database (same backend as the test's opsgate database), initialised
    from the seeded opsgate database."""
    global _counter
    if test_db.backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        initialise(test_db.url, url)
        yield url
        return
    _counter += 1
    name = f"og_{RUN_ID}_ledger_{_counter}"
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        url = _pg_url_for(name)
        initialise(test_db.url, url)
        yield url
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def ledger_db(ledger_url: str) -> Iterator[Database]:
    database = Database(ledger_url)
    yield database
    database.dispose()


@pytest.fixture
def ledger_settings(ledger_url: str) -> LedgerSettings:
    return LedgerSettings(
        database_url=ledger_url,
        secret=SecretStr(SECRET),
        secret_previous=SecretStr(PREVIOUS_SECRET),
    )


@pytest.fixture
def ledger(ledger_settings: LedgerSettings) -> Iterator[TestClient]:
    app = create_app(ledger_settings, configure_logs=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def call_body(
    world: World,
    action: str,
    target: str,
    payload: Mapping[str, Any],
    *,
    request_id: str = "req-ledger-1",
    reason: str = "Customer disputed the charge",
) -> dict[str, Any]:
    """An action call as opsgate sends it (docs/backends.md)."""
    return {
        "action": action,
        "target": target,
        "payload": dict(payload),
        "reason": reason,
        "actor": {"id": world.user_ids["olga"], "name": "olga", "roles": ["ops_lead"]},
        "request_id": request_id,
        "approval_id": None,
        "execution_request_id": None,
    }


def reversal(world: World, payment_id: str, amount: int, **kwargs: Any) -> dict[str, Any]:
    payload = {"amount_minor": amount, "reason_code": "customer_dispute"}
    return call_body(world, "payment.reverse", f"payment:{payment_id}", payload, **kwargs)


def signed_headers(
    method: str,
    path: str,
    body: bytes,
    *,
    key: str | None = None,
    request_id: str = "req-ledger-1",
    secret: str = SECRET,
    at: float | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Headers as opsgate signs a request (v2: the key and request ID are signed too)."""
    headers = {"Content-Type": "application/json"}
    headers |= signing.sign_request(
        secret,
        method,
        path,
        body,
        idempotency_key=key or "",
        request_id=request_id,
        now=time.time() if at is None else at,
    ).headers
    return headers | dict(extra or {})


def post_action(
    client: TestClient | httpx.Client,
    body: Mapping[str, Any],
    key: str | None,
    **kwargs: Any,
) -> httpx.Response:
    raw = json.dumps(body).encode()
    path = f"/v1/actions/{body['action']}"
    return client.post(
        path, content=raw, headers=signed_headers("POST", path, raw, key=key, **kwargs)
    )


def get_operation(client: TestClient | httpx.Client, key: str, **kwargs: Any) -> httpx.Response:
    path = f"/v1/operations/{key}"
    return client.get(path, headers=signed_headers("GET", path, b"", **kwargs))


def assert_signed(response: httpx.Response, secret: str = SECRET) -> None:
    """The answer is signed with `secret`, bound to the request it answers (its signature)
    and over its status and body."""
    sent = response.request.headers[signing.SIGNATURE_HEADER]
    signing.verify_response(
        secret,
        sent.removeprefix("v2="),
        response.status_code,
        response.content,
        response.headers,
        time.time(),
    )


def assert_unsigned(response: httpx.Response) -> None:
    """A refusal of a request that did not verify: bound to nothing, so not signed."""
    assert signing.SIGNATURE_HEADER not in response.headers
    assert signing.TIMESTAMP_HEADER not in response.headers


@dataclass(frozen=True)
class PaymentFacts:
    id: str
    account_id: str
    amount_minor: int
    reversed_minor: int


def reversible_payment(db: Database, n: int = 0) -> PaymentFacts:
    """The n-th payment (by ID) that is not reversed and whose account may move money."""
    with db.reading() as session:
        rows = session.execute(
            select(Payment)
            .join(Account, Account.id == Payment.account_id)
            .where(Account.status == AccountStatus.ACTIVE, Payment.status == PaymentStatus.POSTED)
            .order_by(Payment.id)
            .offset(n)
            .limit(1)
        ).scalars()
        payment = rows.one()
        return PaymentFacts(
            payment.id, payment.account_id, payment.amount_minor, payment.reversed_minor
        )


def payment_row(db: Database, payment_id: str) -> Payment:
    with db.reading() as session:
        row = session.get(Payment, payment_id)
        assert row is not None
        return row


def account_balance(db: Database, account_id: str) -> int:
    with db.reading() as session:
        row = session.get(Account, account_id)
        assert row is not None
        return row.balance_minor
