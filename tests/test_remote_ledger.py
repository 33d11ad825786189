"""Opsgate (console + API) and the demo ledger service as separate processes: one request
followed from the HTTP answer through both services' logs, the audit record, the exported
trace and `opsgate trace`; an approval executed in the ledger; and the unknown outcomes for
real (the ledger stopped, the ledger too slow), settled by `opsgate reconcile`."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from opsgate.core.identity import passwords
from opsgate.core.identity.users import find_user
from opsgate.core.integrations.backends import derive_key
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord, BackendCall
from opsgate_demo.ledger_service.models import LedgerOperation
from opsgate_demo.models import Account, AccountStatus, Payment, PaymentStatus
from tests.conftest import TestDatabase, World
from tests.remote_stack import (
    ExportedSpan,
    TraceCollector,
    ledger_database,
    remote_stack,
)
from tests.step_ups import step_up_header

pytestmark = pytest.mark.multiprocess

PASSWORD = "remote ledger console password 2026"
TRACE_ID = "5c1e9b0e7f3a4d2c8b6a0f1e2d3c4b5a"
TRACEPARENT = f"00-{TRACE_ID}-1a2b3c4d5e6f7081-01"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')
T = TypeVar("T")


@pytest.fixture
def ledger_url(test_db: TestDatabase, tmp_path: Path) -> Iterator[str]:
    with ledger_database(test_db.backend, tmp_path) as url:
        yield url


def eventually(probe: Callable[[], T | None], what: str, seconds: float = 20) -> T:
    """`probe()`'s first truthy value, asked until a deadline (never a timed assertion)."""
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.1)


def reversible(url: str, *, at_least: int, skip: int = 0) -> Payment:
    """A posted, unreversed payment of at least `at_least` minor units on an active account."""
    db = Database(url)
    try:
        with db.reading() as session:
            return session.scalars(
                select(Payment)
                .join(Account, Account.id == Payment.account_id)
                .where(
                    Account.status == AccountStatus.ACTIVE,
                    Payment.status == PaymentStatus.POSTED,
                    Payment.reversed_minor == 0,
                    Payment.amount_minor >= at_least,
                )
                .order_by(Payment.id)
                .offset(skip)
                .limit(1)
            ).one()
    finally:
        db.dispose()


def rows(url: str, model: type[T], **where: Any) -> list[T]:
    db = Database(url)
    try:
        with db.reading() as session:
            stmt = select(model)
            for column, value in where.items():
                stmt = stmt.where(getattr(model, column) == value)
            return list(session.scalars(stmt))
    finally:
        db.dispose()


def reversed_minor(url: str, payment_id: str) -> int:
    [payment] = rows(url, Payment, id=payment_id)
    return payment.reversed_minor


def give_password(url: str, username: str) -> None:
    db = Database(url)
    try:
        with db.writing() as session:
            user = find_user(session, username)
            assert user is not None
            passwords.set_password(session, user, PASSWORD, now=datetime.now(UTC))
            session.commit()
    finally:
        db.dispose()


def reverse(
    base_url: str, world: World, username: str, payment_id: str, amount: int, key: str
) -> httpx.Response:
    return httpx.post(
        f"{base_url}/api/v1/actions/payment.reverse",
        json={
            "target": f"payment:{payment_id}",
            "payload": {"amount_minor": amount, "reason_code": "customer_dispute"},
            "reason": "remote ledger test",
        },
        headers=world.auth(username) | {"Idempotency-Key": key},
        timeout=60,
    )


def console_reversal(base_url: str, payment_id: str, amount: str) -> httpx.Response:
    """Sign in as alice and submit the payment's reversal form as a browser would: the page's
    CSRF token, cookie and Idempotency-Key, plus a `traceparent` header."""
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=60) as browser:
        login = browser.get("/console/login")
        csrf = _CSRF.search(login.text)
        assert login.status_code == 200 and csrf, login.text
        signed_in = browser.post(
            "/console/login",
            data={"username": "alice", "password": PASSWORD, "csrf_token": csrf.group(1)},
        )
        assert signed_in.status_code == 303, signed_in.text
        form = browser.get(f"/console/actions/payment.reverse?target=payment:{payment_id}")
        assert form.status_code == 200, form.text
        csrf, key = _CSRF.search(form.text), _KEY.search(form.text)
        assert csrf and key, form.text
        return browser.post(
            "/console/actions/payment.reverse",
            data={
                "csrf_token": csrf.group(1),
                "idempotency_key": key.group(1),
                "target": f"payment:{payment_id}",
                "payload.amount_minor": amount,
                "payload.reason_code": "customer_dispute",
                "reason": "ticket 4711: customer disputed the charge",
            },
            headers={"traceparent": TRACEPARENT},
        )


def test_one_request_id_through_console_ledger_logs_audit_and_trace(
    test_db: TestDatabase, ledger_url: str, tmp_path: Path
) -> None:
    payment = reversible(test_db.url, at_least=500)
    give_password(test_db.url, "alice")
    with (
        TraceCollector() as collector,
        remote_stack(
            test_db.url,
            ledger_url,
            tmp_path,
            env=collector.env("opsgate"),
            ledger_env=collector.env("opsgate-ledger"),
        ) as stack,
    ):
        [server] = stack.servers
        answer = console_reversal(server.base_url, payment.id, "2.50")
        assert answer.status_code == 200, answer.text
        assert "Reverse payment: executed." in answer.text
        request_id = answer.headers["X-Request-ID"]
        assert request_id in answer.text  # the page quotes it too

        # (a) opsgate's own log lines: the request, the action and the backend call.
        def opsgate_lines() -> dict[str, dict[str, Any]] | None:
            mine = [line for line in server.log_lines() if line.get("request_id") == request_id]
            events = {line["event"]: line for line in mine}
            return events if {"http_request", "action", "backend_call"} <= set(events) else None

        lines = eventually(opsgate_lines, "opsgate logged the request, action and call")
        for event in ("http_request", "action", "backend_call"):
            assert lines[event]["trace_id"] == TRACE_ID, lines[event]
        assert (lines["action"]["action"], lines["action"]["result"]) == (
            "payment.reverse",
            "succeeded",
        )
        assert (lines["backend_call"]["backend"], lines["backend_call"]["outcome"]) == (
            "ledger",
            "succeeded",
        )

        # (b) the ledger's log lines: opsgate's request ID (the ledger mints its own and keeps
        # the caller's as client_request_id) and the same trace.
        def ledger_lines() -> dict[str, dict[str, Any]] | None:
            lines = stack.ledger.log_lines()
            mine = [x for x in lines if x.get("client_request_id") == request_id]
            events = {line["event"]: line for line in mine}
            return events if {"http_request", "operation"} <= set(events) else None

        ledger = eventually(ledger_lines, "the ledger logged the call")
        assert {line["trace_id"] for line in ledger.values()} == {TRACE_ID}
        assert {line["service"] for line in ledger.values()} == {"ledger"}
        assert (ledger["operation"]["outcome"], ledger["operation"]["http_status"]) == (
            "succeeded",
            200,
        )

        # (c) the audit record: succeeded, with the backend's before/after and the trace.
        [audit] = rows(test_db.url, AuditRecord, request_id=request_id, action="payment.reverse")
        assert (audit.result, audit.trace_id) == ("succeeded", TRACE_ID)
        assert audit.before is not None and audit.after is not None
        assert audit.after["reversed_minor"] - audit.before["reversed_minor"] == 250
        assert audit.credential_id is not None and audit.credential_id.startswith("ses_")
        assert reversed_minor(ledger_url, payment.id) == 250  # the ledger moved the money
        assert reversed_minor(test_db.url, payment.id) == 250  # opsgate mirrored it

        # (d) the exported trace: both services' spans, joined by the httpx call.
        def joined() -> tuple[ExportedSpan, ExportedSpan] | None:
            spans = collector.of_trace(TRACE_ID)
            clients = [s for s in spans if (s.service, s.kind) == ("opsgate", "CLIENT")]
            servers = [s for s in spans if (s.service, s.kind) == ("opsgate-ledger", "SERVER")]
            for client in clients:
                for ledger_span in servers:
                    if ledger_span.parent_span_id == client.span_id:
                        return client, ledger_span
            return None

        client_span, ledger_span = eventually(joined, "an opsgate client span and ledger span")
        assert "/v1/actions/payment.reverse" in json.dumps(dict(client_span.attributes))
        # The server span ends after the response is sent, so it may be exported a batch later.
        eventually(
            lambda: [
                s
                for s in collector.of_trace(TRACE_ID)
                if (s.service, s.kind) == ("opsgate", "SERVER")
            ],
            "opsgate's server span",
        )
        assert client_span.trace_id == ledger_span.trace_id == TRACE_ID

        # (e) `opsgate trace <request ID>` shows the audit record and the backend call.
        traced = stack.cli("trace", request_id, "--json")
        assert traced.returncode == 0, traced.stderr
        events = [json.loads(line) for line in traced.stdout.splitlines() if line.strip()]
        kinds = {(e["kind"], e["result"]) for e in events}
        assert ("audit", "succeeded") in kinds, events
        [call] = [e for e in events if e["kind"] == "backend_call"]
        assert call["what"] == f"ledger: payment.reverse payment:{payment.id}"
        assert (call["detail"]["status"], call["detail"]["http_status"]) == ("succeeded", 200)
        assert (call["ids"]["request"], call["ids"]["trace"]) == (request_id, TRACE_ID)


def test_an_approved_reversal_executes_in_the_ledger_with_the_approval_key(
    test_db: TestDatabase, ledger_url: str, tmp_path: Path
) -> None:
    world = test_db.world
    payment = reversible(test_db.url, at_least=20_000)
    with remote_stack(test_db.url, ledger_url, tmp_path) as stack:
        [server] = stack.servers
        held = reverse(server.base_url, world, "alice", payment.id, 20_000, "apr-round-trip")
        assert held.status_code == 202, held.text
        approval_id = held.json()["approval_id"]
        assert rows(ledger_url, LedgerOperation) == []  # nothing reached the ledger yet
        proofs = Database(test_db.url)
        proof = step_up_header(proofs, world.tokens["rita"])
        proofs.dispose()

        approved = httpx.post(
            f"{server.base_url}/api/v1/approvals/{approval_id}/approve",
            json={"comment": "checked the dispute"},
            headers=world.auth("rita") | proof,
            timeout=60,
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "succeeded"
        execution_request_id = approved.json()["execution_request_id"]

    key = derive_key(
        actor_id=world.user_ids["alice"], action="payment.reverse", approval_id=approval_id
    )
    [operation] = rows(ledger_url, LedgerOperation)
    assert (operation.key, operation.status, operation.http_status) == (key, "completed", 200)
    assert operation.request_id == held.json()["request_id"]
    assert reversed_minor(ledger_url, payment.id) == 20_000
    assert reversed_minor(test_db.url, payment.id) == 20_000
    [executed] = rows(
        test_db.url,
        AuditRecord,
        approval_id=approval_id,
        action="payment.reverse",
        result="succeeded",
    )
    assert executed.execution_request_id == execution_request_id
    assert executed.after is not None and executed.after["reversed_minor"] == 20_000
    [call] = rows(test_db.url, BackendCall, approval_id=approval_id)
    assert (call.idempotency_key, call.status) == (key, "succeeded")


@contextmanager
def ledger_payment_locked(ledger_url: str, payment_id: str) -> Iterator[None]:
    """Hold the lock the ledger needs to reverse `payment_id`, in its own database: the
    ledger waits (it is slow), opsgate's call times out. Released on leaving the block."""
    url = make_url(ledger_url)
    if url.get_backend_name() == "sqlite":
        conn = sqlite3.connect(str(url.database), isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")  # SQLite's one writer lock
            yield
        finally:
            conn.rollback()
            conn.close()
        return
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as pg:
        pg.execute("SELECT id FROM payments WHERE id = %s FOR UPDATE", (payment_id,))
        yield
        pg.rollback()


def test_unknown_outcomes_for_real_stopped_then_slow_ledger_then_reconcile(
    test_db: TestDatabase, ledger_url: str, tmp_path: Path
) -> None:
    world = test_db.world
    first = reversible(test_db.url, at_least=500)
    second = reversible(test_db.url, at_least=500, skip=1)
    # One attempt of one second: the slow call ends unknown at once.
    quick: dict[str, Any] = {"timeout_seconds": 1.0, "max_attempts": 1}
    with remote_stack(test_db.url, ledger_url, tmp_path, **quick) as stack:
        [server] = stack.servers

        stack.ledger.stop()
        down = reverse(server.base_url, world, "alice", first.id, 300, "ledger-down")
        assert down.status_code == 503, down.text
        assert down.json()["code"] == "backend_unavailable"
        [refused] = rows(test_db.url, AuditRecord, request_id=down.json()["request_id"])
        assert (refused.result, refused.error_code) == ("failed", "backend_unavailable")

        stack.ledger.start()  # on the same port
        retried = reverse(server.base_url, world, "alice", first.id, 300, "ledger-down")
        assert retried.status_code == 200, retried.text  # the key was released: it runs now

        slow: AbstractContextManager[None] = ledger_payment_locked(ledger_url, second.id)
        with slow:
            timed_out = reverse(server.base_url, world, "alice", second.id, 400, "ledger-slow")
            assert timed_out.status_code == 504, timed_out.text
            assert (timed_out.json()["code"], timed_out.json()["outcome"]) == (
                "backend_timeout",
                "unknown",
            )
        request_id = timed_out.json()["request_id"]
        [unknown] = rows(test_db.url, AuditRecord, request_id=request_id)
        assert (unknown.result, unknown.error_code) == ("unknown", "backend_timeout")
        [call] = rows(test_db.url, BackendCall, request_id=request_id)
        assert call.status == "unknown"

        # The ledger finishes the call once its lock is free; reconcile learns the answer.
        def reconciled() -> bool:
            return stack.cli("reconcile").returncode == 0

        eventually(reconciled, "opsgate reconcile settled every call")

    [call] = rows(test_db.url, BackendCall, request_id=request_id)
    assert call.status == "succeeded"
    records = rows(test_db.url, AuditRecord, request_id=request_id)
    assert [r.result for r in records] == ["unknown", "reconciled"]
    assert reversed_minor(ledger_url, second.id) == 400  # ran once, in the ledger
    assert reversed_minor(test_db.url, second.id) == 400  # and mirrored by reconcile
    assert reversed_minor(ledger_url, first.id) == 300
    assert [op.http_status for op in rows(ledger_url, LedgerOperation)] == [200, 200]
