"""An `opsgate serve` process killed between an approval and its execution strands nothing:
the request then executes exactly once (DESIGN.md invariant 4).

The kill lands at the moment that used to strand a request, after the approver's decision
reached quorum and before the execution moved the request to `executing`:
- on PostgreSQL, by a real row lock: the test holds the payment's row, so the server waits
  on it while loading the target for execution, and is killed while it waits;
- on SQLite, which has no row locks, by the test-only fault point
  `OPSGATE_FAULT_INJECTION=before_execution`: the server kills itself there (SIGKILL).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from opsgate.db.engine import Database
from opsgate.db.models import ApprovalDecision, ApprovalRequest, AuditRecord
from opsgate_demo.models import PaymentReversal
from tests.conftest import TestDatabase, World
from tests.servers import Server, start_server
from tests.step_ups import step_up_header

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _money_request(server: Server, world: World) -> tuple[str, str]:
    payment = next(
        p
        for p in world.summary.payments
        if p["currency"] == "USD" and 20_000 < p["amount_minor"] < 400_000
    )
    held = httpx.post(
        f"{server.base_url}/api/v1/actions/payment.reverse",
        json={
            "target": f"payment:{payment['id']}",
            "payload": {"amount_minor": 15_000, "reason_code": "duplicate_charge"},
            "reason": "charged twice",
        },
        headers=world.auth("alice") | {"Idempotency-Key": "kill-test-reversal"},
        timeout=30,
    )
    assert held.status_code == 202, held.text
    return str(held.json()["approval_id"]), str(payment["id"])


def _step_up(url: str, world: World) -> dict[str, str]:
    db = Database(url)
    try:
        return step_up_header(db, world.tokens["rita"])
    finally:
        db.dispose()


def _approve(url: str, server: Server, world: World, approval_id: str) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/api/v1/approvals/{approval_id}/approve",
        json={"comment": "checked"},
        headers=world.auth("rita") | _step_up(url, world),
        timeout=60,
    )


def _pg_conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _wait_for_lock_waiter(conn: psycopg.Connection[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        ).fetchone()
        if waiting and waiting[0]:
            return
        time.sleep(0.05)
    raise AssertionError("the server never waited on the payment's row lock")


def _wait_for_no_other_backend(conn: psycopg.Connection[Any], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        others = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
        if others is not None and others[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the killed server's database sessions did not end")


def _kill_between_approve_and_execute(
    test_db: TestDatabase, tmp_path: Path, servers: list[Server], approval_id: str, payment: str
) -> None:
    world = test_db.world
    if test_db.backend == "sqlite":
        doomed = start_server(
            test_db.url, tmp_path / "doomed.log", OPSGATE_FAULT_INJECTION="before_execution"
        )
        servers.append(doomed)
        with pytest.raises(httpx.TransportError):
            _approve(test_db.url, doomed, world, approval_id)
        doomed.process.wait(timeout=10)
        assert doomed.process.returncode == -9
        return
    doomed = start_server(test_db.url, tmp_path / "doomed.log")
    servers.append(doomed)
    with psycopg.connect(_pg_conninfo(test_db.url)) as holder:
        holder.execute("SELECT id FROM payments WHERE id = %s FOR UPDATE", (payment,))
        with httpx.Client(timeout=60) as http:
            sent = http.build_request(
                "POST",
                f"{doomed.base_url}/api/v1/approvals/{approval_id}/approve",
                json={"comment": "checked"},
                headers=world.auth("rita") | _step_up(test_db.url, world),
            )
            answers: list[object] = []
            thread = threading.Thread(
                target=lambda: answers.append(_send_ignoring_errors(http, sent))
            )
            thread.start()
            with psycopg.connect(_pg_conninfo(test_db.url), autocommit=True) as watcher:
                _wait_for_lock_waiter(watcher)
                doomed.process.kill()
                doomed.process.wait(timeout=10)
                holder.close()  # let the orphaned backend run on and find its client gone
                _wait_for_no_other_backend(watcher)
            thread.join(timeout=30)
    assert doomed.process.returncode == -9


def _send_ignoring_errors(http: httpx.Client, request: httpx.Request) -> object:
    try:
        return http.send(request)
    except httpx.TransportError as exc:
        return exc


def test_a_server_killed_between_approve_and_execute_strands_nothing(
    test_db: TestDatabase, tmp_path: Path, servers: list[Server]
) -> None:
    world = test_db.world
    first = start_server(test_db.url, tmp_path / "first.log")
    servers.append(first)
    approval_id, payment = _money_request(first, world)
    first.stop()

    _kill_between_approve_and_execute(test_db, tmp_path, servers, approval_id, payment)

    db = Database(test_db.url)
    try:
        with db.reading() as session:
            approval = session.get(ApprovalRequest, approval_id)
            assert approval is not None
            # Nothing of the killed approval survived: not approved-and-waiting, not half-run.
            assert approval.status == "pending"
            assert session.scalar(select(func.count()).select_from(ApprovalDecision)) == 0
            assert session.scalar(select(func.count()).select_from(PaymentReversal)) == 0
    finally:
        db.dispose()

    # The approver tries again on a healthy server: it executes, once.
    healthy = start_server(test_db.url, tmp_path / "healthy.log")
    servers.append(healthy)
    again = _approve(test_db.url, healthy, world, approval_id)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "succeeded"

    db = Database(test_db.url)
    try:
        with db.reading() as session:
            reversals = session.scalars(
                select(PaymentReversal).where(PaymentReversal.payment_id == payment)
            ).all()
            assert [r.amount_minor for r in reversals] == [15_000]
            executions = session.scalars(
                select(AuditRecord).where(
                    AuditRecord.approval_id == approval_id,
                    AuditRecord.execution_request_id.is_not(None),
                )
            ).all()
            assert [(r.result, r.execution_request_id) for r in executions] == [
                ("succeeded", again.json()["execution_request_id"])
            ]
            approved = session.scalars(
                select(AuditRecord).where(
                    AuditRecord.approval_id == approval_id, AuditRecord.result == "approved"
                )
            ).all()
            assert len(approved) == 1
    finally:
        db.dispose()
