"""The webhook outbox: events written in the transaction of the change they report."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from opsgate.core.actions.gateway import Gateway
from opsgate.core.approvals.gate import Decision
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import DomainRejected, StaleApproval
from opsgate.core.identity.actors import Origin
from opsgate.core.integrations import outbox
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, OutboxEvent
from opsgate.web.services import Services
from opsgate_demo.models import Account
from tests.conftest import World, demo_policy_with, services_with_policy
from tests.webhook_receiver import (
    ALL_EVENTS,
    actor,
    hook,
    integrations,
    request_unblock,
    with_integrations,
)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
URL = "http://127.0.0.1:9/hooks"


def origin(request_id: str) -> Origin:
    return Origin(request_id=request_id, ip="127.0.0.1", user_agent="pytest", trace_id=TRACE)


def events(db: Database, event_type: str | None = None) -> list[OutboxEvent]:
    with db.reading() as session:
        stmt = select(OutboxEvent).order_by(OutboxEvent.created_at, OutboxEvent.subscription)
        if event_type:
            stmt = stmt.where(OutboxEvent.event_type == event_type)
        return list(session.scalars(stmt))


@pytest.fixture
def notifying(services: Services) -> Services:
    """Two subscriptions to every event, one only to executions."""
    return with_integrations(
        services,
        integrations(
            hook("audit_sink", URL),
            hook("risk_slack", URL, format="slack", secret=None),
            hook("runs_only", URL, events=frozenset({"approval.executed"})),
        ),
    )


def test_approval_request_writes_one_event_per_subscriber(
    notifying: Services, db: Database, world: World, clock: FrozenClock
) -> None:
    approval_id = request_unblock(notifying, world, origin)
    rows = events(db)
    assert [r.subscription for r in rows] == ["audit_sink", "risk_slack"]
    assert {r.event_type for r in rows} == {"approval.requested"}
    assert len({r.event_id for r in rows}) == 1
    assert {(r.status, r.attempts, r.next_attempt_at) for r in rows} == {
        ("pending", 0, clock.now())
    }
    body = rows[0].payload
    assert body["id"] == rows[0].event_id
    assert (body["type"], body["request_id"], body["trace_id"]) == (
        "approval.requested",
        f"unblock-{world.account(0)}",
        TRACE,
    )
    assert body["occurred_at"] == clock.now().isoformat()
    assert body["approval"] == {
        "id": approval_id,
        "action": "account.unblock",
        "target": f"account:{world.account(0)}",
        "status": "pending",
        "requester": {"id": world.user_ids["rita"], "name": "rita"},
        "reason": "customer verified by phone",
        "payload": {},
        "quorum": 1,
        "approvals": 0,
        "created_at": clock.now().isoformat(),
        "expires_at": (clock.now() + timedelta(hours=24)).isoformat(),
    }
    assert (rows[0].request_id, rows[0].trace_id) == (body["request_id"], TRACE)


def test_nothing_is_written_when_nobody_subscribes(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world, origin)
    services.approvals.decide(
        approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("ok")
    )
    assert events(db) == []


def test_an_action_that_rolls_back_leaves_no_event(
    notifying: Services,
    db: Database,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_audit = Gateway.write_audit

    def crash_on_request(self: Gateway, session: Any, entry: Any, *args: Any) -> Any:
        if entry.result == "approval_requested":  # after the event was enqueued
            raise RuntimeError("the database went away")
        return write_audit(self, session, entry, *args)

    monkeypatch.setattr(Gateway, "write_audit", crash_on_request)
    with pytest.raises(RuntimeError):
        request_unblock(notifying, world, origin)
    monkeypatch.undo()
    with db.reading() as session:
        assert session.scalars(select(ApprovalRequest)).all() == []
    assert events(db) == []


def test_a_decision_that_rolls_back_leaves_no_event(
    notifying: Services,
    db: Database,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    approval_id = request_unblock(notifying, world, origin)

    def crash(session: Any) -> None:
        raise RuntimeError("commit failed")

    # The decision's event is enqueued; then the commit fails.
    original = outbox.notify_approval

    def enqueue_then_fail(session: Any, *args: Any, **kwargs: Any) -> None:
        original(session, *args, **kwargs)
        session.flush()
        monkeypatch.setattr(session, "commit", lambda: crash(session))

    monkeypatch.setattr(outbox, "notify_approval", enqueue_then_fail)
    with pytest.raises(RuntimeError, match="commit failed"):
        notifying.approvals.decide(
            approval_id,
            actor(world, "olga"),
            Decision.REJECT,
            "not convinced",
            origin("rb-1"),
        )
    assert [r.event_type for r in events(db)] == ["approval.requested"] * 2
    with db.reading() as session:
        assert session.get(ApprovalRequest, approval_id).status == "pending"  # type: ignore[union-attr]


def test_each_decision_and_the_execution_are_events(
    services: Services, db: Database, world: World
) -> None:
    two = services_with_policy(
        services,
        demo_policy_with(
            {"tiers = [{ quorum = 1 }]\n\n# Revealing": "tiers = [{ quorum = 2 }]\n\n# Revealing"}
        ),
    )
    notifying = with_integrations(two, integrations(hook("audit_sink", URL)))
    approval_id = request_unblock(notifying, world, origin)
    notifying.approvals.decide(
        approval_id, actor(world, "raj"), Decision.APPROVE, "looks fine", origin("d-1")
    )
    first = events(db, "approval.decided")
    assert len(first) == 1
    assert first[0].payload["approval"]["status"] == "pending"
    assert first[0].payload["approval"]["approvals"] == 1
    assert first[0].payload["approval"]["decision"] == {
        "decision": "approve",
        "decided_by": {"id": world.user_ids["raj"], "name": "raj"},
        "comment": "looks fine",
    }
    notifying.approvals.decide(
        approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("d-2")
    )
    decided = events(db, "approval.decided")
    assert [(e.payload["approval"]["status"], e.request_id) for e in decided] == [
        ("pending", "d-1"),
        ("approved", "d-2"),
    ]
    assert decided[1].payload["approval"]["approvals"] == 2
    [executed] = events(db, "approval.executed")
    run = executed.payload["approval"]
    assert run["status"] == "succeeded"
    with db.reading() as session:
        stored = session.get(ApprovalRequest, approval_id)
        assert stored is not None
    assert run["execution"] == {
        "status": "succeeded",
        "request_id": stored.execution_request_id,
        "executed_at": stored.executed_at.isoformat() if stored.executed_at else None,
        "result": stored.result,
        "error": None,
    }
    # Like the execution's audit record: the original request ID, the approver's trace.
    assert (executed.request_id, executed.trace_id) == (stored.request_id, TRACE)


def test_a_rejection_is_an_event_with_its_comment_masked(
    notifying: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(
        notifying, world, origin, reason="card 4111 1111 1111 1111 was used"
    )
    notifying.approvals.decide(
        approval_id,
        actor(world, "olga"),
        Decision.REJECT,
        "call back on 4111111111111111 first",
        origin("rej-1"),
    )
    decided = events(db, "approval.decided")
    assert [e.subscription for e in decided] == ["audit_sink", "risk_slack"]
    view = decided[0].payload["approval"]
    assert view["status"] == "rejected"
    assert view["decision"]["decision"] == "reject"
    assert "4111" not in str(decided[0].payload).replace("ending 1111", "")
    assert view["reason"] == "card [card ending 1111] was used"
    assert events(db, "approval.executed") == []


def test_a_stale_execution_is_an_executed_event(
    notifying: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(notifying, world, origin)
    with db.writing() as session:
        account = session.get(Account, world.account(0))
        assert account is not None
        account.blocked_reason = "compliance_hold"
        session.commit()
    with pytest.raises(StaleApproval):
        notifying.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("st-1")
        )
    executed = events(db, "approval.executed")
    assert [e.subscription for e in executed] == ["audit_sink", "risk_slack", "runs_only"]
    run = executed[0].payload["approval"]["execution"]
    assert run["status"] == "stale"
    assert run["error"]["code"] == "stale_approval"
    assert "target changed" in run["error"]["message"]


def test_a_failed_execution_is_an_executed_event(
    notifying: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(notifying, world, origin)
    with db.writing() as session:
        session.execute(
            update(Account)
            .where(Account.id == world.account(0))
            .values(status="active", blocked_reason=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    with pytest.raises(DomainRejected):
        notifying.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("f-1")
        )
    [executed, *_] = events(db, "approval.executed")
    run = executed.payload["approval"]["execution"]
    assert (run["status"], run["error"]["code"]) == (
        "failed",
        "domain_rejected:account_not_blocked",
    )


def test_expiry_is_an_event(
    notifying: Services, db: Database, world: World, clock: FrozenClock
) -> None:
    approval_id = request_unblock(notifying, world, origin)
    clock.advance(timedelta(hours=24, seconds=1))
    assert notifying.approvals.expire_due(origin("sweep")) == [approval_id]
    expired = events(db, "approval.expired")
    assert [e.subscription for e in expired] == ["audit_sink", "risk_slack"]
    assert expired[0].payload["approval"]["status"] == "expired"
    assert expired[0].request_id == "sweep"
    assert expired[0].created_at == clock.now()


def test_enqueue_adds_to_the_callers_transaction_only(db: Database, clock: FrozenClock) -> None:
    configured = integrations(hook("a", URL), hook("b", URL, events=ALL_EVENTS))
    with db.writing() as session:
        rows = outbox.enqueue(
            session,
            configured,
            "approval.expired",
            {"approval": {"id": "apr_x"}},
            request_id="r-1",
            trace_id=None,
            now=clock.now(),
        )
        assert len(rows) == 2
        session.rollback()
    assert events(db) == []
    with db.writing() as session:
        none = outbox.enqueue(
            session,
            integrations(hook("a", URL, events=frozenset({"approval.requested"}))),
            "approval.expired",
            {},
            request_id=None,
            trace_id=None,
            now=clock.now(),
        )
        session.commit()
    assert none == []
    assert events(db) == []
