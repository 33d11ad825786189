"""Approval gates (DESIGN.md invariants 3 and 4) on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from opsgate.core.actions.gateway import Gateway
from opsgate.core.actions.policy import PolicyError, parse_policy
from opsgate.core.approvals.gate import Approvals, Decision
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import (
    ApprovalExpired,
    ApprovalNotPending,
    DomainRejected,
    Forbidden,
    InvalidPayload,
    SelfApproval,
    StaleApproval,
)
from opsgate.core.identity import tokens
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.identity.users import ensure_user
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, AuditRecord, User, UserRole
from opsgate.web.services import Services
from opsgate_demo.models import Account
from opsgate_demo.plugin import DEMO_POLICY
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World
from tests.registries import build_registry

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


def origin(request_id: str) -> Origin:
    return Origin(request_id=request_id, ip="127.0.0.1", user_agent="pytest")


def block(services: Services, world: World, n: int = 0) -> str:
    account = world.account(n)
    services.gateway.submit(
        actor(world, "alice"),
        "account.block",
        {
            "target": f"account:{account}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "suspicious",
        },
        origin(f"block-{account}"),
    )
    return account


def request_unblock(services: Services, world: World, who: str = "rita", n: int = 0) -> str:
    account = block(services, world, n)
    result = services.gateway.submit(
        actor(world, who),
        "account.unblock",
        {"target": f"account:{account}", "payload": {}, "reason": "customer verified by phone"},
        origin(f"unblock-{account}"),
    )
    assert result.status == "pending_approval"
    assert result.approval_id is not None
    return result.approval_id


def approval(db: Database, approval_id: str) -> ApprovalRequest:
    with db.reading() as session:
        row = session.get(ApprovalRequest, approval_id)
        assert row is not None
        return row


def account_status(db: Database, account_id: str) -> str:
    with db.reading() as session:
        row = session.get(Account, account_id)
        assert row is not None
        return row.status


def audits(db: Database, approval_id: str) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.approval_id == approval_id)
                .order_by(AuditRecord.seq)
            )
        )


def test_gated_action_is_stored_not_executed(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world)
    row = approval(db, approval_id)
    assert row.status == "pending"
    assert row.action == "account.unblock"
    assert row.requester_id == world.user_ids["rita"]
    assert row.reason == "customer verified by phone"
    assert row.policy_version == services.policy.version
    assert len(row.payload_hash) == 64
    assert row.target_snapshot["status"] == "blocked"
    assert row.target_version == row.target_snapshot["version"]
    assert row.proposed_change["before"]["status"] == "blocked"
    assert row.proposed_change["after"]["status"] == "active"
    assert row.expires_at - row.created_at == timedelta(hours=24)
    assert account_status(db, world.account(0)) == "blocked"
    [requested] = audits(db, approval_id)
    assert (requested.result, requested.request_id) == ("approval_requested", row.request_id)


def test_quorum_one_executes_on_approval(services: Services, db: Database, world: World) -> None:
    approval_id = request_unblock(services, world)
    result = services.approvals.decide(
        approval_id, actor(world, "olga"), Decision.APPROVE, "ok", origin("approve-1")
    )
    assert result.status == "succeeded"
    assert result.execution_request_id not in (None, "approve-1")
    assert account_status(db, world.account(0)) == "active"
    row = approval(db, approval_id)
    assert (row.status, row.execution_request_id) == ("succeeded", result.execution_request_id)
    results = [(a.result, a.request_id, a.execution_request_id) for a in audits(db, approval_id)]
    original = row.request_id
    assert results == [
        ("approval_requested", original, None),
        ("approved", "approve-1", None),
        ("succeeded", original, result.execution_request_id),
    ]
    executed = audits(db, approval_id)[-1]
    assert executed.actor_id == world.user_ids["rita"]  # the action is the requester's
    assert executed.before["status"] == "blocked"  # type: ignore[index]
    assert executed.after["status"] == "active"  # type: ignore[index]


# --- segregation of duties ----------------------------------------------------------------


def test_requester_cannot_approve_even_holding_an_approver_role(
    services: Services, db: Database, world: World
) -> None:
    # olga (ops_lead) may both start and approve account.unblock.
    approval_id = request_unblock(services, world, who="olga")
    with pytest.raises(SelfApproval):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("self-1")
        )
    assert approval(db, approval_id).status == "pending"
    assert audits(db, approval_id)[-1].error_code == "self_approval"


def test_requester_cannot_approve_with_more_roles_or_another_credential(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world, who="rita")
    as_admin_too = Actor(
        id=world.user_ids["rita"],
        name="rita",
        roles=frozenset({"risk_reviewer", "ops_lead", "admin"}),
        credential_id="tok_other",
    )
    with pytest.raises(SelfApproval):
        services.approvals.decide(approval_id, as_admin_too, Decision.APPROVE, None, origin("s2"))
    with pytest.raises(SelfApproval):
        services.approvals.decide(approval_id, as_admin_too, Decision.REJECT, "no", origin("s3"))
    assert approval(db, approval_id).status == "pending"


def test_only_approver_roles_decide(services: Services, db: Database, world: World) -> None:
    approval_id = request_unblock(services, world)
    for username in ("alice", "adam", "audrey"):
        with pytest.raises(Forbidden):
            services.approvals.decide(
                approval_id, actor(world, username), Decision.APPROVE, None, origin(f"f-{username}")
            )
    assert approval(db, approval_id).status == "pending"


def test_admin_cannot_raise_own_privileges(services: Services, db: Database, world: World) -> None:
    adam = actor(world, "adam")
    with pytest.raises(DomainRejected) as caught:
        services.gateway.submit(
            adam,
            "admin.assign_role",
            {
                "target": f"user:{adam.id}",
                "payload": {"role": "ops_lead", "operation": "grant"},
                "reason": "I need it",
            },
            origin("escalate-1"),
        )
    assert caught.value.reason == "own_roles"
    with db.reading() as session:
        assert session.scalars(select(ApprovalRequest)).first() is None


def test_beneficiary_of_a_role_change_cannot_approve_it(
    services: Services, db: Database, world: World
) -> None:
    result = services.gateway.submit(
        actor(world, "adam"),
        "admin.assign_role",
        {
            "target": f"user:{world.user_ids['ada']}",
            "payload": {"role": "ops_lead", "operation": "grant"},
            "reason": "covering shifts",
        },
        origin("grant-1"),
    )
    assert result.approval_id is not None
    with pytest.raises(SelfApproval):
        services.approvals.decide(
            result.approval_id, actor(world, "ada"), Decision.APPROVE, None, origin("grant-2")
        )
    # A third admin may approve; the grant then happens once.
    with db.writing() as session:
        third = ensure_user(session, "amir", "Amir Third", ("admin",), now=services.clock.now())
        session.commit()
        third_actor = Actor(id=third.id, name="amir", roles=frozenset({"admin"}))
    done = services.approvals.decide(
        result.approval_id, third_actor, Decision.APPROVE, None, origin("grant-3")
    )
    assert done.status == "succeeded"
    with db.reading() as session:
        ada = session.get(User, world.user_ids["ada"])
        assert ada is not None
        assert ada.role_names() == {"admin", "ops_lead"}


# --- quorum and rejection -----------------------------------------------------------------

QUORUM_TWO = DEMO_POLICY.read_text().replace(
    """[actions."account.unblock".approval]
mode = "enforce"
approver_roles = ["risk_reviewer", "ops_lead"]
expires_in = "24h"
tiers = [{ quorum = 1 }]""",
    """[actions."account.unblock".approval]
mode = "%s"
approver_roles = ["risk_reviewer", "ops_lead"]
expires_in = "2h"
tiers = [{ quorum = 2 }]""",
)


def services_with(services: Services, policy_text: str) -> Services:
    registry = build_registry()
    policy = parse_policy(policy_text, registry)
    gateway = Gateway(services.db, registry, policy, services.clock)
    return Services(
        services.settings,
        services.db,
        registry,
        policy,
        services.clock,
        gateway,
        Approvals(gateway),
    )


def test_quorum_counts_distinct_people(services: Services, db: Database, world: World) -> None:
    strict = services_with(services, QUORUM_TWO % "enforce")
    approval_id = request_unblock(strict, world, who="olga")
    first = strict.approvals.decide(
        approval_id, actor(world, "rita"), Decision.APPROVE, None, origin("q-1")
    )
    assert (first.status, first.approvals, first.quorum) == ("pending", 1, 2)
    again = Actor(id=world.user_ids["rita"], name="rita", roles=ROLES["rita"], credential_id="t2")
    with pytest.raises(Forbidden):
        strict.approvals.decide(approval_id, again, Decision.APPROVE, None, origin("q-2"))
    assert approval(db, approval_id).status == "pending"
    assert account_status(db, world.account(0)) == "blocked"
    second = strict.approvals.decide(
        approval_id, actor(world, "raj"), Decision.APPROVE, None, origin("q-3")
    )
    assert second.status == "succeeded"
    assert account_status(db, world.account(0)) == "active"


def test_one_rejection_rejects(services: Services, db: Database, world: World) -> None:
    strict = services_with(services, QUORUM_TWO % "enforce")
    approval_id = request_unblock(strict, world, who="olga")
    strict.approvals.decide(approval_id, actor(world, "rita"), Decision.APPROVE, None, origin("r1"))
    result = strict.approvals.decide(
        approval_id, actor(world, "raj"), Decision.REJECT, "chargeback open", origin("r2")
    )
    assert result.status == "rejected"
    assert approval(db, approval_id).status_detail == "chargeback open"
    assert account_status(db, world.account(0)) == "blocked"
    with pytest.raises(ApprovalNotPending):
        strict.approvals.decide(
            approval_id, actor(world, "raj"), Decision.APPROVE, None, origin("r3")
        )


@pytest.mark.parametrize("comment", [None, "", "   "])
def test_reject_needs_a_comment_and_changes_nothing(
    services: Services, db: Database, world: World, comment: str | None
) -> None:
    approval_id = request_unblock(services, world)
    with pytest.raises(InvalidPayload):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.REJECT, comment, origin("nc-1")
        )
    row = approval(db, approval_id)
    assert (row.status, row.decisions) == ("pending", [])
    assert audits(db, approval_id)[-1].result == "invalid"


def test_cancel_by_requester_only(services: Services, db: Database, world: World) -> None:
    approval_id = request_unblock(services, world)
    with pytest.raises(Forbidden):
        services.approvals.cancel(approval_id, actor(world, "olga"), origin("c-1"))
    result = services.approvals.cancel(approval_id, actor(world, "rita"), origin("c-2"))
    assert result.status == "cancelled"
    with pytest.raises(ApprovalNotPending):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("c-3")
        )
    assert account_status(db, world.account(0)) == "blocked"


# --- expiry and staleness -----------------------------------------------------------------


def test_expired_request_never_executes(
    services: Services, db: Database, world: World, clock: FrozenClock
) -> None:
    approval_id = request_unblock(services, world)
    clock.advance(timedelta(hours=24, seconds=1))
    with pytest.raises(ApprovalExpired):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("e-1")
        )
    assert approval(db, approval_id).status == "expired"
    assert account_status(db, world.account(0)) == "blocked"
    assert [a.result for a in audits(db, approval_id)][-2:] == ["expired", "denied"]


def test_expire_due_sweeps_pending_requests(
    services: Services, db: Database, world: World, clock: FrozenClock
) -> None:
    first = request_unblock(services, world, n=0)
    clock.advance(timedelta(hours=12))
    second = request_unblock(services, world, n=1)
    clock.advance(timedelta(hours=12, seconds=1))
    assert services.approvals.expire_due(origin("sweep")) == [first]
    assert (approval(db, first).status, approval(db, second).status) == ("expired", "pending")


def test_target_changed_after_request_gives_stale_and_no_handler_call(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world)
    with db.writing() as session:
        account = session.get(Account, world.account(0))
        assert account is not None
        account.blocked_reason = "compliance_hold"  # someone else changed the target
        session.commit()
    with pytest.raises(StaleApproval):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("st-1")
        )
    row = approval(db, approval_id)
    assert row.status == "stale"
    assert "target changed" in (row.status_detail or "")
    assert account_status(db, world.account(0)) == "blocked"
    assert audits(db, approval_id)[-1].result == "stale"


def test_policy_change_gives_stale(services: Services, db: Database, world: World) -> None:
    approval_id = request_unblock(services, world)
    changed = services_with(
        services, DEMO_POLICY.read_text().replace("reads only.", "reads only, and exports.")
    )
    assert changed.policy.version != services.policy.version
    with pytest.raises(StaleApproval):
        changed.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("sp-1")
        )
    assert approval(db, approval_id).status == "stale"
    assert account_status(db, world.account(0)) == "blocked"


def test_requester_losing_permission_gives_stale(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world, who="rita")
    with db.writing() as session:
        session.execute(
            update(UserRole)
            .where(UserRole.user_id == world.user_ids["rita"])
            .values(role="support_agent")
        )
        session.commit()
    with pytest.raises(StaleApproval):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("sr-1")
        )
    assert account_status(db, world.account(0)) == "blocked"


def test_tampered_payload_gives_stale(services: Services, db: Database, world: World) -> None:
    approval_id = request_unblock(services, world)
    with db.writing() as session:
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == approval_id)
            .values(payload={"injected": True})
        )
        session.commit()
    with pytest.raises(StaleApproval):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("tp-1")
        )
    assert account_status(db, world.account(0)) == "blocked"


def test_handler_refusal_at_execution_marks_failed(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world)
    # The account is unblocked by another path (simulated) without touching its version.
    with db.writing() as session:
        session.execute(
            update(Account)
            .where(Account.id == world.account(0))
            .values(status="active", blocked_reason=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
    with pytest.raises(DomainRejected) as caught:
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("hf-1")
        )
    assert caught.value.extra["approval_status"] == "failed"
    row = approval(db, approval_id)
    assert (row.status, row.error_code) == ("failed", "domain_rejected:account_not_blocked")
    assert audits(db, approval_id)[-1].result == "failed"


# --- monitor mode -------------------------------------------------------------------------


def test_monitor_mode_executes_and_records_the_control_event(
    services: Services, db: Database, world: World
) -> None:
    watching = services_with(services, QUORUM_TWO % "monitor")
    account = block(watching, world)
    result = watching.gateway.submit(
        actor(world, "rita"),
        "account.unblock",
        {"target": f"account:{account}", "payload": {}, "reason": "verified"},
        origin("mon-1"),
    )
    assert result.status == "succeeded"
    assert account_status(db, account) == "active"
    with db.reading() as session:
        rows = list(session.scalars(select(AuditRecord).where(AuditRecord.request_id == "mon-1")))
    by_result = {row.result: row for row in rows}
    assert set(by_result) == {"succeeded", "would_require_approval"}
    event = by_result["would_require_approval"]
    assert event.outcome["rule"]["quorum"] == 2  # type: ignore[index]
    assert event.policy_version == watching.policy.version
    assert event.actor_id == world.user_ids["rita"]


def test_self_approval_rule_has_no_switch(services: Services, world: World) -> None:
    # Even with the gate in monitor mode for starting, a stored request is never decided by
    # its requester: there is no policy key that could turn the rule off.
    text = QUORUM_TWO % "enforce"
    with pytest.raises(PolicyError, match="unknown key"):
        parse_policy(
            text.replace('expires_in = "2h"', 'expires_in = "2h"\nallow_self = true'),
            build_registry(),
        )


# --- concurrency --------------------------------------------------------------------------


def make_reviewers(db: Database, count: int, now: Any) -> list[Actor]:
    with db.writing() as session:
        users = [
            ensure_user(session, f"reviewer{n}", f"Reviewer {n}", ("risk_reviewer",), now=now)
            for n in range(count)
        ]
        session.commit()
        return [
            Actor(id=u.id, name=u.display_name, roles=frozenset({"risk_reviewer"})) for u in users
        ]


def test_concurrent_approvers_execute_exactly_once(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world, who="olga")
    reviewers = make_reviewers(db, 20, services.clock.now())
    barrier = threading.Barrier(len(reviewers))
    outcomes: list[str] = []
    lock = threading.Lock()

    def approve(reviewer: Actor) -> None:
        barrier.wait()
        try:
            result = services.approvals.decide(
                approval_id, reviewer, Decision.APPROVE, None, origin(f"cc-{reviewer.id}")
            )
            outcome = result.status
        except ApprovalNotPending:
            outcome = "not_pending"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=approve, args=(r,)) for r in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == 20
    assert outcomes.count("succeeded") == 1
    assert outcomes.count("not_pending") == 19
    executions = [a for a in audits(db, approval_id) if a.execution_request_id]
    assert [a.result for a in executions] == ["succeeded"]
    with db.reading() as session:
        assert len(approval(db, approval_id).decisions) == 1
        session.close()


def test_token_of_requester_is_refused_through_the_api(
    services: Services, db: Database, world: World, client: Any
) -> None:
    account = block(services, world)
    response = client.post(
        "/api/v1/actions/account.unblock",
        json={"target": f"account:{account}", "payload": {}, "reason": "verified"},
        headers=world.auth("olga"),
    )
    assert response.status_code == 202, response.text
    approval_id = response.json()["approval_id"]
    with db.writing() as session:
        user = session.get(User, world.user_ids["olga"])
        assert user is not None
        second = tokens.issue_token(
            session, user, name="second", now=services.clock.now(), ttl=timedelta(days=1)
        )
        session.commit()
    for headers in (world.auth("olga"), {"Authorization": f"Bearer {second.secret}"}):
        refused = client.post(f"/api/v1/approvals/{approval_id}/approve", json={}, headers=headers)
        assert refused.status_code == 403
        assert refused.json()["code"] == "self_approval"
        assert refused.json()["request_id"] == refused.headers["X-Request-ID"]
    assert approval(db, approval_id).status == "pending"


# --- recovery of requests an older opsgate stranded ---------------------------------------


def strand(services: Services, db: Database, world: World) -> str:
    """A request left `approved` with no execution, as an opsgate before 0.x left it when
    its process died between the approval's commit and the execution's."""
    approval_id = request_unblock(services, world)
    with db.writing() as session:
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == approval_id)
            .values(status="approved", decided_at=services.clock.now())
        )
        session.commit()
    return approval_id


def test_recover_executes_a_stranded_approval_once_however_many_run_it(
    services: Services, db: Database, world: World
) -> None:
    approval_id = strand(services, db, world)
    services.clock.advance(timedelta(minutes=5))  # type: ignore[attr-defined]
    barrier = threading.Barrier(4)
    handled: list[list[tuple[str, str]]] = []

    def recover(n: int) -> None:
        barrier.wait()
        handled.append(
            services.approvals.recover(origin(f"recover-{n}"), approved_before=services.clock.now())
        )

    threads = [threading.Thread(target=recover, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(h for h in handled if h) == [[(approval_id, "succeeded")]]
    assert account_status(db, world.account(0)) == "active"
    executions = [a for a in audits(db, approval_id) if a.execution_request_id]
    assert [a.result for a in executions] == ["succeeded"]


def test_recover_expires_a_stranded_approval_past_its_expiry(
    services: Services, db: Database, world: World
) -> None:
    approval_id = strand(services, db, world)
    services.clock.advance(timedelta(hours=25))  # type: ignore[attr-defined]
    handled = services.approvals.recover(origin("recover"), approved_before=services.clock.now())
    assert handled == [(approval_id, "expired")]
    assert account_status(db, world.account(0)) == "blocked"
    assert [a.result for a in audits(db, approval_id)][-1] == "expired"


def test_recover_leaves_a_just_approved_request_to_its_executor(
    services: Services, db: Database, world: World
) -> None:
    approval_id = strand(services, db, world)
    before = services.clock.now() - timedelta(seconds=60)
    assert services.approvals.recover(origin("recover"), approved_before=before) == []
    assert approval(db, approval_id).status == "approved"
