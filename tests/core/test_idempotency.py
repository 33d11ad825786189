"""Idempotency claims are fenced (core/actions/idempotency.py): a slow first request whose key a
retry
took over can never commit its effect, and the action transaction gives up on a locked target
before the takeover timeout. Real threads and real database locks, on both databases."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from opsgate.core.actions.gateway import ActionResult, Gateway, Replayed
from opsgate.core.actions.idempotency import ClaimLost, Idempotency, Replay
from opsgate.core.actions.policy import load_policy
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import IdempotencyInFlight, TargetBusy
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.request_ids import new_request_id
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord, IdempotencyRecord
from opsgate.settings import Settings
from opsgate_demo.models import Payment, PaymentReversal
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import TestDatabase
from tests.registries import build_registry

# The race at a 2 s takeover timeout; the action transaction waits less than that.
TAKEOVER = timedelta(seconds=2)
LOCK_TIMEOUT = timedelta(seconds=1.5)
KEY = "slow-owner-1"


class PausingIdempotency(Idempotency):
    """Runs `after_claim` in the thread that has just claimed a key: the test's way to act
    between the claim's commit and the action transaction (a stalled process)."""

    after_claim: Callable[[], None] | None = None

    def claim(
        self, actor_id: str, key: str, action: str, fingerprint: str, request_id: str, now: datetime
    ) -> Replay | None:
        replay = super().claim(actor_id, key, action, fingerprint, request_id, now)
        hook, self.after_claim = self.after_claim, None
        if hook is not None:
            hook()
        return replay


@pytest.fixture
def acting_db(test_db: TestDatabase) -> Iterator[Database]:
    database = Database(test_db.url, lock_timeout=LOCK_TIMEOUT, statement_timeout=LOCK_TIMEOUT)
    yield database
    database.dispose()


def build_gateway(db: Database, clock: FrozenClock) -> tuple[Gateway, PausingIdempotency]:
    registry = build_registry()
    idempotency = PausingIdempotency(db, retention=timedelta(hours=24), lock_timeout=TAKEOVER)
    gateway = Gateway(db, registry, load_policy(DEMO_POLICY, registry), clock, idempotency)
    return gateway, idempotency


def alice(test_db: TestDatabase) -> Actor:
    return Actor(test_db.world.user_ids["alice"], "Alice", frozenset({"support_agent"}))


def small_payment(db: Database) -> Payment:
    with db.reading() as session:
        payment = session.scalars(
            select(Payment).where(Payment.amount_minor.between(2_000, 10_000)).order_by(Payment.id)
        ).first()
        assert payment is not None
        return payment


def reversal(payment_id: str) -> dict[str, Any]:
    return {
        "target": f"payment:{payment_id}",
        "payload": {"amount_minor": 500, "reason_code": "duplicate_charge"},
        "reason": "charged twice",
    }


def reversals(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        return int(
            session.scalar(select(func.count()).where(PaymentReversal.payment_id == payment_id))
            or 0
        )


def succeeded_records(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    AuditRecord.action == "payment.reverse",
                    AuditRecord.target == f"payment:{payment_id}",
                    AuditRecord.result == "succeeded",
                )
            )
            or 0
        )


def busy_records(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        return int(
            session.scalar(
                select(func.count()).where(
                    AuditRecord.target == f"payment:{payment_id}",
                    AuditRecord.result == "failed",
                    AuditRecord.error_code == "target_busy",
                )
            )
            or 0
        )


def key_owner(db: Database, actor_id: str) -> str | None:
    with db.reading() as session:
        row = session.get(IdempotencyRecord, (actor_id, KEY), populate_existing=True)
        return row.request_id if row is not None else None


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _pg_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def lock_waiters(url: str) -> int:
    with psycopg.connect(_pg_conninfo(url), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
        return int(row[0]) if row else 0


@contextmanager
def holding(test_db: TestDatabase, payment_id: str) -> Iterator[None]:
    """Hold what a reversal of `payment_id` must wait for: the payment's row lock
    (PostgreSQL) or the single writer lock (SQLite)."""
    if test_db.backend == "postgresql":
        with psycopg.connect(_pg_conninfo(test_db.url)) as conn:
            conn.execute("SELECT id FROM payments WHERE id = %s FOR UPDATE", (payment_id,))
            yield
            conn.rollback()
        return
    path = make_url(test_db.url).database
    assert path is not None
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def submit_in_thread(
    gateway: Gateway, actor: Actor, body: dict[str, Any], request_id: str, answers: dict[str, Any]
) -> threading.Thread:
    def run() -> None:
        try:
            answers[request_id] = gateway.submit(
                actor, "payment.reverse", body, Origin(request_id), idempotency_key=KEY
            )
        except Exception as exc:
            answers[request_id] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_slow_owner_and_the_retry_that_took_over_reverse_the_payment_once(
    test_db: TestDatabase, acting_db: Database
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    gateway, idempotency = build_gateway(acting_db, clock)
    actor, payment = alice(test_db), small_payment(acting_db)
    claimed, resume = threading.Event(), threading.Event()

    def stall() -> None:  # runs in the first request's thread, right after its claim
        claimed.set()
        assert resume.wait(30)

    idempotency.after_claim = stall
    answers: dict[str, Any] = {}
    first_id, retry_id = new_request_id(), new_request_id()
    first = submit_in_thread(gateway, actor, reversal(payment.id), first_id, answers)
    assert claimed.wait(10)
    if test_db.backend == "postgresql":
        with holding(test_db, payment.id):
            # The first request really waits on the payment's row lock, in its transaction.
            resume.set()
            wait_until(lambda: lock_waiters(test_db.url) >= 1)
            # The takeover timeout passes; the retry judges the first request dead.
            clock.advance(TAKEOVER + timedelta(seconds=1))
            retry = submit_in_thread(gateway, actor, reversal(payment.id), retry_id, answers)
            wait_until(lambda: key_owner(acting_db, actor.id) == retry_id)
            wait_until(lambda: lock_waiters(test_db.url) >= 2)  # the retry waits too
    else:
        # One writer at a time: the first request stalls between its claim and its
        # transaction while the retry takes the key over and runs to its end.
        clock.advance(TAKEOVER + timedelta(seconds=1))
        retry = submit_in_thread(gateway, actor, reversal(payment.id), retry_id, answers)
        retry.join(30)
        resume.set()
    first.join(30)
    retry.join(30)

    assert reversals(acting_db, payment.id) == 1
    assert succeeded_records(acting_db, payment.id) == 1
    outcomes = sorted(type(answer).__name__ for answer in answers.values())
    executed = [a for a in answers.values() if isinstance(a, ActionResult)]
    assert len(executed) == 1 and executed[0].status == "succeeded", answers
    [other] = [a for a in answers.values() if a is not executed[0]]
    assert isinstance(other, Replayed | IdempotencyInFlight), outcomes
    # The retry's answer is the one that executed; the slow first request was fenced off.
    assert executed[0].request_id == retry_id


def test_a_request_waiting_on_a_locked_target_gives_up_before_the_takeover(
    test_db: TestDatabase, acting_db: Database
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    gateway, _ = build_gateway(acting_db, clock)
    actor, payment = alice(test_db), small_payment(acting_db)
    answers: dict[str, Any] = {}
    with holding(test_db, payment.id):
        started = time.monotonic()
        submit_in_thread(gateway, actor, reversal(payment.id), new_request_id(), answers).join(
            TAKEOVER.total_seconds() * 5
        )
        waited = time.monotonic() - started
    [answer] = answers.values()
    assert isinstance(answer, TargetBusy), answer
    assert waited < TAKEOVER.total_seconds() * 2, waited
    assert reversals(acting_db, payment.id) == 0
    if test_db.backend == "postgresql":  # SQLite cannot record it while the lock is held
        assert busy_records(acting_db, payment.id) == 1
    # Whatever the first attempt left behind, a retry after the takeover timeout runs once.
    clock.advance(TAKEOVER + timedelta(seconds=1))
    retried: dict[str, Any] = {}
    submit_in_thread(gateway, actor, reversal(payment.id), new_request_id(), retried).join(30)
    [again] = retried.values()
    assert isinstance(again, ActionResult) and again.status == "succeeded", again
    assert reversals(acting_db, payment.id) == 1


@pytest.mark.parametrize("setting", ["db_lock_timeout_seconds", "db_statement_timeout_seconds"])
def test_transaction_timeouts_must_stay_below_the_takeover_timeout(setting: str) -> None:
    below = {"db_lock_timeout_seconds": 10, "db_statement_timeout_seconds": 10}
    with pytest.raises(ValidationError, match=setting.upper()):
        Settings(idempotency_lock_timeout_seconds=30, **(below | {setting: 30}))
    accepted = Settings(idempotency_lock_timeout_seconds=30, **(below | {setting: 29}))
    assert getattr(accepted, setting) == 29


def test_a_lost_claim_stores_nothing_and_a_release_leaves_the_new_owner_alone(
    test_db: TestDatabase, db: Database
) -> None:
    now = datetime.now(UTC)
    idempotency = Idempotency(db, retention=timedelta(hours=1), lock_timeout=TAKEOVER)
    actor_id = test_db.world.user_ids["alice"]
    assert idempotency.claim(actor_id, KEY, "payment.reverse", "h", "req_first", now) is None
    later = now + TAKEOVER + timedelta(seconds=1)
    assert idempotency.claim(actor_id, KEY, "payment.reverse", "h", "req_retry", later) is None
    with db.writing() as session, pytest.raises(ClaimLost):
        Idempotency.complete(session, actor_id, KEY, "req_first", 200, {"late": True})
    idempotency.release(actor_id, KEY, "req_first")
    assert key_owner(db, actor_id) == "req_retry"
    with db.writing() as session:
        Idempotency.complete(session, actor_id, KEY, "req_retry", 200, {"first": True})
        session.commit()
    assert idempotency.stored_answer(actor_id, KEY) == Replay(200, {"first": True})
