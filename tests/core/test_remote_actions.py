"""Actions bound to a remote backend: what the control layer records for each kind of answer,
the derived idempotency key, approved executions, and reconciliation of unknown outcomes.

The backend here is a scripted stand-in for the HTTP client (core/integrations/backends.py is tested
against a real server in test_backends.py, and the whole path against the real ledger service
in tests/test_remote_ledger.py); these tests are about what the control layer does with each
answer, on both databases.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from opsgate.core.actions.gateway import Gateway
from opsgate.core.approvals.gate import Decision
from opsgate.core.errors import BackendRejected, BackendTimeout, BackendUnavailable
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.integrations.backends import BackendAnswer, BackendRequest, LookupAnswer
from opsgate.core.integrations.config import Backend, Integrations
from opsgate.core.integrations.reconcile import reconcile
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, AuditRecord, BackendCall
from opsgate.web.services import Services
from opsgate_demo.models import LedgerTransaction, Payment
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import FrozenClock, World
from tests.domain.test_money import large_payment, small_payment
from tests.step_ups import stepped_up

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}
LEDGER = Backend(
    name="ledger",
    url="http://ledger.invalid",
    actions=frozenset({"payment.reverse", "account.adjust_balance"}),
    secret="s" * 32,
)


@dataclass
class ScriptedBackend:
    """Answers calls and lookups from scripts; records every request it is given."""

    answers: list[Callable[[BackendRequest], BackendAnswer]] = field(default_factory=list)
    lookups: list[LookupAnswer] = field(default_factory=list)
    requests: list[BackendRequest] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, backend: Backend, request: BackendRequest) -> BackendAnswer:
        with self.lock:
            self.requests.append(request)
            script = self.answers.pop(0)
        return script(request)

    def lookup(self, backend: Backend, key: str) -> LookupAnswer:
        self.asked.append(key)
        return self.lookups.pop(0)

    def close(self) -> None:
        pass


def executed(db: Database, *, reversed_to: int | None = None) -> Callable[..., BackendAnswer]:
    """An answer as the ledger gives it: the payment's state before and after."""

    def answer(request: BackendRequest) -> BackendAnswer:
        payment_id = request.target.split(":", 1)[1]
        with db.reading() as session:
            payment = session.get(Payment, payment_id)
            assert payment is not None
            before = {"id": payment.id, "reversed_minor": payment.reversed_minor}
            version = payment.version
        amount = int(request.payload["amount_minor"])
        after_minor = reversed_to if reversed_to is not None else before["reversed_minor"] + amount
        after = {"id": payment_id, "reversed_minor": after_minor}
        state = {
            request.target: {
                "status": "partially_reversed",
                "reversed_minor": after_minor,
                "version": version + 1,
            }
        }
        return ok_answer(
            {"result": {"reversal_id": "rev_remote"}, "before": before, "after": after}
            | {"state": state}
        )

    return answer


def ok_answer(body: dict[str, Any], *, replayed: bool = False) -> BackendAnswer:
    return BackendAnswer(
        outcome="succeeded",
        http_status=200,
        body=body,
        error=None,
        attempts=1,
        seconds=0.01,
        replayed=replayed,
    )


def failed_answer(
    outcome: str, http_status: int | None, body: dict[str, Any] | None = None
) -> BackendAnswer:
    return BackendAnswer(
        outcome=outcome,
        http_status=http_status,
        body=body,
        error=f"scripted {outcome}",
        attempts=3 if outcome != "rejected" else 1,
        seconds=0.5,
    )


def remote_services(
    services: Services, backend: ScriptedBackend, ledger: Backend = LEDGER
) -> Services:
    """The demo with reversals and adjustments bound to the scripted ledger."""
    bound = services
    integrations = Integrations(backends={"ledger": ledger})
    gateway = Gateway(
        bound.db,
        bound.registry,
        bound.policy,
        bound.clock,
        bound.gateway.idempotency,
        integrations,
        backend,  # type: ignore[arg-type]
    )
    from opsgate.core.approvals.gate import Approvals

    return Services(
        bound.settings,
        bound.db,
        bound.registry,
        bound.policy,
        bound.clock,
        gateway,
        Approvals(gateway),
        integrations,
    )


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


def reverse(
    services: Services, world: World, payment_id: str, amount: int, key: str, rid: str
) -> Any:
    return services.gateway.submit(
        actor(world, "alice"),
        "payment.reverse",
        {
            "target": f"payment:{payment_id}",
            "payload": {"amount_minor": amount, "reason_code": "customer_dispute"},
            "reason": "customer disputes the charge",
        },
        Origin(rid, trace_id="4bf92f3577b34da6a3ce929d0e0e4736"),
        key,
    )


def records(db: Database, request_id: str) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.request_id == request_id)
                .order_by(AuditRecord.seq)
            )
        )


def calls(db: Database) -> list[BackendCall]:
    with db.reading() as session:
        return list(session.scalars(select(BackendCall).order_by(BackendCall.started_at)))


def ledger_transactions(db: Database) -> int:
    with db.reading() as session:
        return len(list(session.scalars(select(LedgerTransaction.id))))


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
def remote(services: Services, backend: ScriptedBackend) -> Services:
    return remote_services(services, backend)


# --- answers ------------------------------------------------------------------------------


def test_success_is_audited_with_the_backends_change_and_mirrored(
    remote: Services, backend: ScriptedBackend, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    before_txns = ledger_transactions(db)
    backend.answers.append(executed(db))

    result = reverse(remote, world, payment.id, 100, "key-1", "req-ok")

    assert result.status == "succeeded"
    assert result.result == {"reversal_id": "rev_remote"}
    (sent,) = backend.requests
    assert sent.request_id == "req-ok"
    assert sent.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert sent.payload == {"amount_minor": 100, "reason_code": "customer_dispute"}
    assert sent.actor_id == world.user_ids["alice"]
    assert sent.idempotency_key.startswith("og1_") and "key-1" not in sent.idempotency_key
    (record,) = [r for r in records(db, "req-ok") if r.action == "payment.reverse"]
    assert record.result == "succeeded"
    assert record.before == {"id": payment.id, "reversed_minor": 0}
    assert record.after == {"id": payment.id, "reversed_minor": 100}
    assert record.outcome["backend"] == "ledger"
    assert record.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    (call,) = calls(db)
    assert (call.status, call.request_id, call.idempotency_key) == (
        "succeeded",
        "req-ok",
        sent.idempotency_key,
    )
    assert record.outcome["backend_call_id"] == call.id
    # The local read model follows the backend; the local ledger is not written twice.
    with db.reading() as session:
        mirrored = session.get(Payment, payment.id)
        assert mirrored is not None
        assert (mirrored.reversed_minor, mirrored.version) == (100, payment.version + 1)
    assert ledger_transactions(db) == before_txns


def test_the_derived_key_is_stable_for_a_retry_and_differs_per_key_and_actor(
    remote: Services, backend: ScriptedBackend, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    backend.answers += [lambda _r: failed_answer("unavailable", 503)] * 2 + [executed(db)]
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            reverse(remote, world, payment.id, 100, "same-key", "req-a")
    reverse(remote, world, payment.id, 100, "same-key", "req-b")
    keys = [request.idempotency_key for request in backend.requests]
    assert len(set(keys)) == 1

    from opsgate.core.integrations.backends import derive_key

    other_key = derive_key(
        actor_id=world.user_ids["alice"], action="payment.reverse", client_key="k2"
    )
    other_actor = derive_key(
        actor_id=world.user_ids["bob"], action="payment.reverse", client_key="same-key"
    )
    assert len({keys[0], other_key, other_actor}) == 3


def test_a_backend_refusal_is_final_stored_and_replayed(
    remote: Services, backend: ScriptedBackend, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    refusal = {"code": "reversal_exceeds_payment", "detail": "Only 10 remain."}
    backend.answers.append(lambda _r: failed_answer("rejected", 409, refusal))

    with pytest.raises(BackendRejected) as caught:
        reverse(remote, world, payment.id, 100, "key-r", "req-r")
    assert caught.value.status == 409
    assert caught.value.extra["backend_call_id"] == calls(db)[0].id
    (record,) = [r for r in records(db, "req-r") if r.action == "payment.reverse"]
    assert record.result == "failed"
    assert record.error_code == "backend_rejected:reversal_exceeds_payment"

    replay = reverse(remote, world, payment.id, 100, "key-r", "req-r2")
    assert replay.replayed and replay.http_status == 409
    assert replay.body()["code"] == "backend_rejected"
    assert len(backend.requests) == 1  # never asked twice
    assert calls(db)[0].status == "rejected"


def test_an_unknown_outcome_is_recorded_as_unknown_and_a_retry_asks_again(
    remote: Services, backend: ScriptedBackend, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    backend.answers += [lambda _r: failed_answer("unknown", None), executed(db)]

    with pytest.raises(BackendTimeout) as caught:
        reverse(remote, world, payment.id, 100, "key-u", "req-u")
    assert caught.value.status == 504
    assert caught.value.extra["outcome"] == "unknown"
    (record,) = [r for r in records(db, "req-u") if r.action == "payment.reverse"]
    assert (record.result, record.error_code) == ("unknown", "backend_timeout")
    assert calls(db)[0].status == "unknown"
    with db.reading() as session:
        assert session.get(Payment, payment.id).reversed_minor == 0  # type: ignore[union-attr]

    # The caller's retry with the same key reaches the backend under the same derived key.
    retried = reverse(remote, world, payment.id, 100, "key-u", "req-u2")
    assert retried.status == "succeeded"
    first, second = backend.requests
    assert first.idempotency_key == second.idempotency_key


def test_unavailable_means_nothing_was_done(
    remote: Services, backend: ScriptedBackend, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    backend.answers.append(lambda _r: failed_answer("unavailable", None))
    with pytest.raises(BackendUnavailable):
        reverse(remote, world, payment.id, 100, "key-n", "req-n")
    (record,) = [r for r in records(db, "req-n") if r.action == "payment.reverse"]
    assert (record.result, record.error_code) == ("failed", "backend_unavailable")
    assert calls(db)[0].status == "unavailable"


# --- approvals ----------------------------------------------------------------------------


def test_an_approved_execution_runs_remotely_under_the_approvals_key(
    remote: Services, backend: ScriptedBackend, db: Database, world: World
) -> None:
    payment = large_payment(db, at_least=20_000)
    pending = reverse(remote, world, payment.id, 20_000, "key-big", "req-big")
    assert pending.status == "pending_approval"
    assert backend.requests == []  # nothing leaves before the approval
    backend.answers.append(executed(db))

    rita, proof = stepped_up(db, actor(world, "rita"), remote.clock.now())
    done = remote.approvals.decide(
        pending.approval_id, rita, Decision.APPROVE, None, Origin("req-approve"), step_up=proof
    )

    assert done.status == "succeeded"
    (sent,) = backend.requests
    assert sent.approval_id == pending.approval_id
    assert sent.execution_request_id == done.execution_request_id
    assert sent.request_id == "req-big"
    from opsgate.core.integrations.backends import derive_key

    assert sent.idempotency_key == derive_key(
        actor_id=world.user_ids["alice"], action="payment.reverse", approval_id=pending.approval_id
    )
    with db.reading() as session:
        approval = session.get(ApprovalRequest, pending.approval_id)
        assert approval is not None
        assert (approval.status, approval.result) == ("succeeded", {"reversal_id": "rev_remote"})


def test_an_unknown_execution_stays_executing_until_reconciled(
    remote: Services, backend: ScriptedBackend, db: Database, world: World, clock: FrozenClock
) -> None:
    payment = large_payment(db, at_least=20_000)
    pending = reverse(remote, world, payment.id, 20_000, "key-big", "req-big")
    backend.answers.append(lambda _r: failed_answer("unknown", 502))
    rita, proof = stepped_up(db, actor(world, "rita"), remote.clock.now())
    with pytest.raises(BackendTimeout) as caught:
        remote.approvals.decide(
            pending.approval_id, rita, Decision.APPROVE, None, Origin("req-ap"), step_up=proof
        )
    assert caught.value.extra["approval_status"] == "executing"

    completed = executed(db)(backend.requests[0])
    backend.lookups.append(
        LookupAnswer(status="completed", http_status=200, response=completed.body, error=None)
    )
    (settled,) = reconcile(remote.gateway)

    assert (settled.was, settled.status) == ("unknown", "succeeded")
    assert backend.asked == [backend.requests[0].idempotency_key]
    with db.reading() as session:
        approval = session.get(ApprovalRequest, pending.approval_id)
        assert approval is not None and approval.status == "succeeded"
        assert session.get(Payment, payment.id).reversed_minor == 20_000  # type: ignore[union-attr]
    reconciled = [r for r in records(db, "req-big") if r.result == "reconciled"]
    assert len(reconciled) == 1
    assert reconciled[0].approval_id == pending.approval_id
    assert reconciled[0].outcome["backend_outcome"] == "succeeded"
    assert reconciled[0].after == {"id": payment.id, "reversed_minor": 20_000}
    # Nothing is left to reconcile, and a second run asks nobody.
    assert reconcile(remote.gateway) == []


# --- reconciliation -----------------------------------------------------------------------


def test_a_key_the_backend_never_saw_is_settled_only_after_the_signature_window(
    remote: Services, backend: ScriptedBackend, db: Database, world: World, clock: FrozenClock
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    backend.answers.append(lambda _r: failed_answer("unknown", None))
    with pytest.raises(BackendTimeout):
        reverse(remote, world, payment.id, 100, "key-w", "req-w")
    never_seen = LookupAnswer(status="not_found", http_status=404, response=None, error=None)

    backend.lookups.append(never_seen)
    (early,) = reconcile(remote.gateway)
    assert (early.status, early.settled) == ("unknown", False)

    clock.advance(timedelta(minutes=7))
    backend.lookups.append(never_seen)
    (late,) = reconcile(remote.gateway)
    assert (late.status, late.settled) == ("not_executed", True)
    assert calls(db)[0].status == "not_executed"
    assert [r.result for r in records(db, "req-w") if r.action == "payment.reverse"] == [
        "unknown",
        "reconciled",
    ]


def test_a_call_answered_by_a_later_retry_is_settled_without_asking(
    remote: Services, backend: ScriptedBackend, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    backend.answers += [lambda _r: failed_answer("unknown", None), executed(db)]
    with pytest.raises(BackendTimeout):
        reverse(remote, world, payment.id, 100, "key-s", "req-s")
    reverse(remote, world, payment.id, 100, "key-s", "req-s2")

    (settled,) = reconcile(remote.gateway)

    assert (settled.was, settled.status) == ("unknown", "succeeded")
    assert backend.asked == []
    (note,) = [r for r in records(db, "req-s") if r.result == "reconciled"]
    (retry,) = [call for call in calls(db) if call.request_id == "req-s2"]
    assert note.outcome["settled_by"] == retry.id
    # The effect has exactly one record that carries it: the retry's.
    assert note.before is None and note.after is None


def test_a_call_abandoned_by_a_crash_is_reconciled_once_it_is_old_enough(
    remote: Services, backend: ScriptedBackend, db: Database, world: World, clock: FrozenClock
) -> None:
    payment = small_payment(db, world, at_most=10_000)

    def crash(_request: BackendRequest) -> BackendAnswer:
        raise SystemExit("the process died mid-call")

    backend.answers.append(crash)
    with pytest.raises(SystemExit):
        reverse(remote, world, payment.id, 100, "key-c", "req-c")
    assert calls(db)[0].status == "pending"
    assert reconcile(remote.gateway) == []  # too young: its process may still be working

    clock.advance(timedelta(minutes=6))
    completed = executed(db)(backend.requests[0])
    backend.lookups.append(
        LookupAnswer(status="completed", http_status=200, response=completed.body, error=None)
    )
    (settled,) = reconcile(remote.gateway)
    assert (settled.was, settled.status) == ("pending", "succeeded")
    with db.reading() as session:
        assert session.get(Payment, payment.id).reversed_minor == 100  # type: ignore[union-attr]


def test_the_background_loop_settles_unknown_calls(
    remote: Services, backend: ScriptedBackend, db: Database, world: World, clock: FrozenClock
) -> None:
    from opsgate.core.integrations.reconcile import ReconcileLoop

    payment = small_payment(db, world, at_most=10_000)
    backend.answers.append(lambda _r: failed_answer("unknown", None))
    with pytest.raises(BackendTimeout):
        reverse(remote, world, payment.id, 100, "key-l", "req-l")
    completed = executed(db)(backend.requests[0])
    backend.lookups.append(
        LookupAnswer(status="completed", http_status=200, response=completed.body, error=None)
    )
    loop = ReconcileLoop(remote.gateway, interval=0.05)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while calls(db)[0].status == "unknown":
            assert time.monotonic() < deadline, "the loop never settled the call"
            time.sleep(0.05)
    finally:
        loop.stop()
    assert not loop.running
    assert calls(db)[0].status == "succeeded"
    assert [r.result for r in records(db, "req-l") if r.action == "payment.reverse"] == [
        "unknown",
        "reconciled",
    ]
