"""Scale-out: three `opsgate serve` processes on one PostgreSQL and the ledger service, under
concurrent clients spread over the three. No duplicate execution, no lost audit record, one
unbroken chain, no backend call left pending or unknown."""

from __future__ import annotations

import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from opsgate.core.identity import tokens
from opsgate.core.identity.users import ensure_user
from opsgate.core.integrations.backends import derive_key
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord, BackendCall
from opsgate_demo.ledger_service.models import LedgerOperation
from opsgate_demo.models import Account, AccountStatus, Payment, PaymentReversal, PaymentStatus
from tests.conftest import TestDatabase, World, demo_policy_with
from tests.domain.test_money import UNGATED_REVERSALS, ledger_is_consistent
from tests.remote_stack import RemoteStack, ledger_database, remote_stack
from tests.step_ups import step_up_header

pytestmark = pytest.mark.multiprocess

PROCESSES = 3
CLIENTS = 12
DISTINCT = 24  # reversals of distinct payments, one each
SAME_PAYMENT = 12  # reversals of one payment, each with its own key: only 3 fit
SAME_KEY = 9  # one reversal, its key sent to every process at once
REVIEWERS = 9  # approvers racing on one request
OPERATORS = ("alice", "bob", "rita", "raj", "olga")


@dataclass(frozen=True)
class Answer:
    kind: str
    status: int
    body: dict[str, Any]
    request_id: str
    replayed: bool


@dataclass(frozen=True)
class Job:
    kind: str
    path: str
    body: dict[str, Any]
    headers: dict[str, str]

    def send(self, base_url: str) -> Answer:
        response = httpx.post(
            f"{base_url}{self.path}", json=self.body, headers=self.headers, timeout=120
        )
        return Answer(
            self.kind,
            response.status_code,
            response.json(),
            response.headers["X-Request-ID"],
            response.headers.get("Idempotent-Replayed") == "true",
        )


@pytest.fixture
def stack(test_db: TestDatabase, tmp_path: Path) -> Iterator[RemoteStack]:
    if test_db.backend != "postgresql":
        pytest.skip(
            "scale-out is proved on PostgreSQL: processes on one SQLite file take turns at "
            "its single writer lock (docs/operations.md, Many processes)"
        )
    policy = tmp_path / "ungated.toml"  # no approval, no hourly count for reversals
    policy.write_text(demo_policy_with(UNGATED_REVERSALS), encoding="utf-8")
    with (
        ledger_database(test_db.backend, tmp_path) as ledger_url,
        remote_stack(
            test_db.url,
            ledger_url,
            tmp_path,
            processes=PROCESSES,
            env={"OPSGATE_POLICY": str(policy)},
        ) as started,
    ):
        yield started


def payments(url: str, count: int, at_least: int) -> list[Payment]:
    db = Database(url)
    try:
        with db.reading() as session:
            return list(
                session.scalars(
                    select(Payment)
                    .join(Account, Account.id == Payment.account_id)
                    .where(
                        Account.status == AccountStatus.ACTIVE,
                        Payment.status == PaymentStatus.POSTED,
                        Payment.reversed_minor == 0,
                        Payment.amount_minor >= at_least,
                    )
                    .order_by(Payment.id)
                    .limit(count)
                )
            )
    finally:
        db.dispose()


def reviewer_tokens(url: str, count: int) -> list[str]:
    db = Database(url)
    now = datetime.now(UTC)
    secrets = []
    try:
        with db.writing() as session:
            for n in range(count):
                user = ensure_user(
                    session, f"scale-reviewer{n}", f"Reviewer {n}", ("risk_reviewer",), now=now
                )
                issued = tokens.issue_token(
                    session, user, name="t", now=now, ttl=timedelta(hours=1)
                )
                secrets.append(issued.secret)
            session.commit()
    finally:
        db.dispose()
    return secrets


def post(base_url: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{base_url}{path}", json=body, headers=headers, timeout=120)


def reversal(payment_id: str, amount: int) -> dict[str, Any]:
    return {
        "target": f"payment:{payment_id}",
        "payload": {"amount_minor": amount, "reason_code": "customer_dispute"},
        "reason": "scale-out test",
    }


def test_three_processes_one_postgresql_and_the_ledger_under_concurrent_clients(
    stack: RemoteStack, test_db: TestDatabase
) -> None:
    world: World = test_db.world
    urls = [server.base_url for server in stack.servers]
    ledger_url = stack.ledger.database_url
    *distinct, shared, once = payments(test_db.url, DISTINCT + 2, at_least=1_000)
    share = shared.amount_minor // 4 + 1  # three fit in the payment, a fourth never does
    reviewers = reviewer_tokens(test_db.url, REVIEWERS)
    ledger_reversals_before = count(ledger_url, PaymentReversal)

    held = post(
        urls[0],
        "/api/v1/actions/account.adjust_balance",
        {
            "target": f"account:{distinct[0].account_id}",
            "payload": {"amount_minor": 500, "memo": "scale-out correction"},
            "reason": "scale-out test",
        },
        world.auth("olga") | {"Idempotency-Key": "scale-adjustment"},
    )
    assert held.status_code == 202, held.text
    approval_id = held.json()["approval_id"]

    reverse_path = "/api/v1/actions/payment.reverse"
    jobs: list[Job] = []
    for n, payment in enumerate(distinct):
        headers = world.auth(OPERATORS[n % 5]) | {"Idempotency-Key": f"distinct-{n}"}
        jobs.append(Job("distinct", reverse_path, reversal(payment.id, 100), headers))
    for n in range(SAME_PAYMENT):
        headers = world.auth(OPERATORS[n % 5]) | {"Idempotency-Key": f"same-payment-{n}"}
        jobs.append(Job("same_payment", reverse_path, reversal(shared.id, share), headers))
    same_key = world.auth("olga") | {"Idempotency-Key": "one-key-three-processes"}
    jobs += [Job("same_key", reverse_path, reversal(once.id, 100), same_key)] * SAME_KEY
    approve_path = f"/api/v1/approvals/{approval_id}/approve"
    proofs = Database(test_db.url)
    for secret in reviewers:
        # A money-moving approval through the API needs each reviewer's step-up grant.
        headers = {"Authorization": f"Bearer {secret}"} | step_up_header(proofs, secret)
        jobs.append(Job("approve", approve_path, {"comment": "looks right"}, headers))
    proofs.dispose()
    random.Random(7).shuffle(jobs)
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(job.send, urls[n % PROCESSES]) for n, job in enumerate(jobs)]
        answers = [future.result() for future in futures]

    def of(kind: str) -> list[Answer]:
        return [a for a in answers if a.kind == kind]

    # Every distinct payment reversed once.
    assert [a.status for a in of("distinct")] == [200] * DISTINCT, of("distinct")
    # Different keys on one payment: the domain caps it at what the payment was worth.
    capped = of("same_payment")
    assert sorted(a.status for a in capped) == [200] * 3 + [409] * (SAME_PAYMENT - 3), capped
    assert {a.body["code"] for a in capped if a.status == 409} <= {
        "domain_rejected",
        "backend_rejected",
    }
    # One key sent to all three processes at once: one execution, the rest replay or wait.
    keyed = of("same_key")
    assert {a.status for a in keyed} <= {200, 409}, keyed
    assert [a for a in keyed if a.status == 200 and not a.replayed], keyed
    assert len({a.body["audit_id"] for a in keyed if a.status == 200}) == 1
    assert {a.body["code"] for a in keyed if a.status == 409} <= {"idempotency_in_flight"}
    # Reviewers racing through different processes: one execution.
    decided = of("approve")
    assert sorted(a.status for a in decided) == [200] + [409] * (REVIEWERS - 1), decided
    [winner] = [a.body for a in decided if a.status == 200]
    assert winner["status"] == "succeeded", winner
    assert {a.body["code"] for a in decided if a.status == 409} == {"approval_not_pending"}

    # No lost audit record: every answer's request ID has its record, every 200 its audit ID.
    records = all_audit(test_db.url)
    by_request = {r.request_id for r in records}
    assert [a for a in answers if a.request_id not in by_request] == []
    audit_ids = {r.id for r in records}
    assert {a.body["audit_id"] for a in answers if "audit_id" in a.body} <= audit_ids
    # Counts agree: succeeded reversals answered == succeeded audit records == ledger effects.
    executed = {a.body["audit_id"] for a in answers if a.kind != "approve" and a.status == 200}
    succeeded = [r for r in records if r.action == "payment.reverse" and r.result == "succeeded"]
    assert len(executed) == len(succeeded) == DISTINCT + 3 + 1
    operations = all_rows(ledger_url, LedgerOperation)
    reversals_run = [
        o for o in operations if o.action == "payment.reverse" and o.http_status == 200
    ]
    assert len(reversals_run) == len(succeeded)
    assert count(ledger_url, PaymentReversal) - ledger_reversals_before == len(succeeded)
    adjusted = [
        r for r in records if r.action == "account.adjust_balance" and r.result == "succeeded"
    ]
    assert [r.execution_request_id for r in adjusted] == [winner["execution_request_id"]]
    approval_key = derive_key(
        actor_id=world.user_ids["olga"], action="account.adjust_balance", approval_id=approval_id
    )
    assert [o.key for o in operations if o.action == "account.adjust_balance"] == [approval_key]

    # No duplicate execution in the ledger: its books balance, nothing over-reversed, and
    # each payment moved exactly as often as it was answered.
    ledger_db = Database(ledger_url)
    try:
        ledger_is_consistent(ledger_db)
    finally:
        ledger_db.dispose()
    assert reversed_in(ledger_url, shared.id) == 3 * share <= shared.amount_minor
    assert reversed_in(ledger_url, once.id) == 100
    for payment in (*distinct, shared, once):  # opsgate's read model mirrors the ledger
        assert reversed_in(test_db.url, payment.id) == reversed_in(ledger_url, payment.id)

    # Every backend call settled; one unbroken chain.
    calls = all_rows(test_db.url, BackendCall)
    assert sorted({c.status for c in calls}) in (["succeeded"], ["rejected", "succeeded"])
    assert len([c for c in calls if c.status == "succeeded"]) == len(succeeded) + 1
    verified = stack.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("ok: ")


def all_rows(url: str, model: type[Any]) -> list[Any]:
    db = Database(url)
    try:
        with db.reading() as session:
            return list(session.scalars(select(model)))
    finally:
        db.dispose()


def all_audit(url: str) -> list[AuditRecord]:
    return all_rows(url, AuditRecord)


def count(url: str, model: type[Any]) -> int:
    db = Database(url)
    try:
        with db.reading() as session:
            return int(session.scalar(select(func.count()).select_from(model)) or 0)
    finally:
        db.dispose()


def reversed_in(url: str, payment_id: str) -> int:
    db = Database(url)
    try:
        with db.reading() as session:
            payment = session.get(Payment, payment_id)
            assert payment is not None
            return payment.reversed_minor
    finally:
        db.dispose()
