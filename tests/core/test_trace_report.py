"""`trace_report.gather`: everything known about one request, in order, found by its request
ID, its execution request ID, its trace ID or its approval ID."""

from __future__ import annotations

import json

import pytest

from opsgate.core.approvals.gate import Decision
from opsgate.core.audit import trace_report
from opsgate.core.audit.trace_report import EventKind, TraceReport
from opsgate.core.errors import ApprovalNotPending
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.models import BackendCall, OutboxEvent
from opsgate.web.services import Services
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}
REQUESTER_TRACE = "11111111111111111111111111111111"
APPROVER_TRACE = "22222222222222222222222222222222"


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


def origin(request_id: str, trace_id: str | None = None) -> Origin:
    return Origin(request_id=request_id, ip="127.0.0.1", user_agent="pytest", trace_id=trace_id)


def approved_unblock(services: Services, world: World) -> tuple[str, str]:
    """Block an account, ask to unblock it (held), approve it (executes). Returns the
    approval ID and the execution request ID."""
    account = world.account()
    target = f"account:{account}"
    services.gateway.submit(
        actor(world, "alice"),
        "account.block",
        {"target": target, "payload": {"reason_code": "fraud_suspected"}, "reason": "r"},
        origin("block-1"),
    )
    held = services.gateway.submit(
        actor(world, "rita"),
        "account.unblock",
        {"target": target, "payload": {}, "reason": "verified"},
        origin("unblock-1", REQUESTER_TRACE),
    )
    assert held.approval_id is not None
    decided = services.approvals.decide(
        held.approval_id,
        actor(world, "olga"),
        Decision.APPROVE,
        "ok",
        origin("approve-1", APPROVER_TRACE),
    )
    assert decided.status == "succeeded"
    assert decided.execution_request_id is not None
    return held.approval_id, decided.execution_request_id


def add_backend_call_and_webhook(services: Services, approval_id: str, execution_id: str) -> None:
    now = services.clock.now()
    with services.db.writing() as session:
        session.add(
            BackendCall(
                id="bkc_1",
                backend="core-banking",
                action="account.unblock",
                target="account:x",
                request_id="unblock-1",
                execution_request_id=execution_id,
                approval_id=approval_id,
                trace_id=APPROVER_TRACE,
                idempotency_key="k",
                status="succeeded",
                attempts=1,
                http_status=200,
                started_at=now,
            )
        )
        session.add(
            OutboxEvent(
                id="obx_1",
                event_id="evt_1",
                event_type="action.succeeded",
                subscription="crm",
                payload={},
                request_id=execution_id,
                trace_id=APPROVER_TRACE,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        session.commit()


def story(report: TraceReport) -> list[tuple[str, str]]:
    return [(event.kind, event.result) for event in report.events]


THE_STORY = [
    (EventKind.APPROVAL, "now succeeded"),
    (EventKind.AUDIT, "approval_requested"),
    (EventKind.DECISION, "approved"),
    (EventKind.AUDIT, "approved"),
    (EventKind.BACKEND_CALL, "succeeded (HTTP 200)"),
    (EventKind.AUDIT, "succeeded"),
    (EventKind.OUTBOX, "pending"),
]


@pytest.mark.parametrize("by", ["request", "execution", "approval", "requester", "approver"])
def test_an_approved_request_is_told_whole_and_in_order(
    services: Services, world: World, by: str
) -> None:
    approval_id, execution_id = approved_unblock(services, world)
    add_backend_call_and_webhook(services, approval_id, execution_id)
    key = {
        "request": "unblock-1",
        "execution": execution_id,
        "approval": approval_id,
        "requester": REQUESTER_TRACE,
        "approver": APPROVER_TRACE,
    }[by]

    with services.db.reading() as session:
        report = trace_report.gather(session, key)

    assert report.found and not report.truncated
    assert story(report) == THE_STORY
    audit = [e for e in report.events if e.kind == EventKind.AUDIT]
    assert [e.ids.get("trace") for e in audit] == [REQUESTER_TRACE, APPROVER_TRACE, APPROVER_TRACE]
    assert [e.ids["request"] for e in audit] == ["unblock-1", "approve-1", "unblock-1"]
    assert audit[2].ids["execution"] == execution_id
    assert all(e.ids.get("approval") == approval_id for e in audit)
    assert "block-1" not in {e.ids.get("request") for e in report.events}  # another request
    for event in report.events:
        json.dumps(event.as_dict())  # the --json form


def test_a_request_without_approval_is_its_audit_record(services: Services, world: World) -> None:
    services.gateway.submit(
        actor(world, "alice"),
        "customer.add_note",
        {"target": f"customer:{world.customer()}", "payload": {"text": "hi"}, "reason": "r"},
        origin("note-1", REQUESTER_TRACE),
    )
    with services.db.reading() as session:
        report = trace_report.gather(session, "note-1")
    [event] = report.events
    assert (event.kind, event.result) == (EventKind.AUDIT, "succeeded")
    assert event.what.startswith("customer.add_note customer:")
    assert event.detail["trace_id"] == REQUESTER_TRACE
    assert event.detail["request_id"] == "note-1"


def test_refusals_are_part_of_the_story(services: Services, world: World) -> None:
    approval_id, _execution_id = approved_unblock(services, world)
    with pytest.raises(ApprovalNotPending):
        services.approvals.decide(
            approval_id, actor(world, "raj"), Decision.APPROVE, "late", origin("late-1")
        )
    with services.db.reading() as session:
        report = trace_report.gather(session, approval_id)
    audit = [(e.ids["request"], e.result) for e in report.events if e.kind == EventKind.AUDIT]
    assert audit[-1] == ("late-1", "denied (approval_not_pending)")


def test_nothing_known(services: Services) -> None:
    with services.db.reading() as session:
        for key in ("no-such-request", "33333333333333333333333333333333", "apr_nothing"):
            report = trace_report.gather(session, key)
            assert not report.found
            assert report.events == []


def test_a_report_past_its_limit_says_so(services: Services, world: World) -> None:
    approved_unblock(services, world)
    with services.db.reading() as session:
        report = trace_report.gather(session, "unblock-1", limit=2)
    assert report.truncated
    assert len([e for e in report.events if e.kind == EventKind.AUDIT]) == 2
