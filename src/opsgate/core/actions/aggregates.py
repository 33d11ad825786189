"""Cumulative figures for policy conditions, so that a threshold cannot be avoided by
splitting (DESIGN.md invariant 9): what one target, one actor or one customer has already
had of an action within a window, plus the request being judged.

Every accepted use of an action that moves money or is counted by policy (executed, or held
for approval) is recorded as a `UsageEvent` in the same transaction as its effect, with its
target, the customer it belongs to and the approval request holding it. A use held for
approval counts while that request may still execute (pending and unexpired, approved,
executing) or has executed; once it is rejected, cancelled, expired, stale or failed it stops
counting. So requests waiting for approval cannot be stacked under a threshold.

The figures are computed inside the action's transaction, after the target row is locked,
under locks that serialise every request that could change them: on PostgreSQL one
transaction-scoped advisory lock per actor (shared with usage limits), per target and per
customer, always taken in that order and per action, so that two requests never wait on each
other crosswise; on SQLite the single writer (`BEGIN IMMEDIATE`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, text
from sqlalchemy.orm import Session

from opsgate.core.actions.conditions import Aggregate, Measure, Scope
from opsgate.core.actions.policy import ControlMode, Policy
from opsgate.core.actions.registry import TargetKind
from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.durations import parse_duration
from opsgate.core.ids import new_id
from opsgate.db.models import ApprovalRequest, UsageEvent

_STILL_COUNTING = (ApprovalStatus.APPROVED, ApprovalStatus.EXECUTING, ApprovalStatus.SUCCEEDED)


@dataclass(frozen=True)
class Use:
    """One request as the cumulative controls see it."""

    action: str
    actor_id: str
    target: str
    customer: str | None
    # The magnitude of the payload's amount field; None when the payload has none.
    amount_minor: int | None
    # Whether an accepted use is recorded (money-moving, or counted by the policy).
    recorded: bool


def use_of(
    session: Session,
    policy: Policy,
    kind: TargetKind,
    obj: object,
    *,
    action: str,
    actor_id: str,
    target: str,
    payload: Mapping[str, Any],
    money_moving: bool,
) -> Use:
    """Describe this request for the cumulative controls (looks up the target's customer)."""
    recorded = money_moving or policy.counts_uses(action)
    value = payload.get(policy.amount_field(action))
    amount = abs(value) if isinstance(value, int) and not isinstance(value, bool) else None
    customer = kind.customer_of(session, obj) if recorded and kind.customer_of else None
    return Use(action, actor_id, target, customer, amount, recorded)


def counting(now: datetime) -> ColumnElement[bool]:
    """Usage events that still count at `now` (query them outer-joined to their approval)."""
    return or_(
        UsageEvent.approval_id.is_(None),
        ApprovalRequest.status.in_([s.value for s in _STILL_COUNTING]),
        and_(
            ApprovalRequest.status == ApprovalStatus.PENDING.value,
            ApprovalRequest.expires_at > now,
        ),
    )


def measure(session: Session, policy: Policy, use: Use, now: datetime) -> dict[str, int]:
    """The cumulative figures the action's approval rule needs, keyed by `Aggregate.key`,
    this request included. Takes the locks that keep them true until commit."""
    wanted = policy.aggregates_for(use.action)
    if not wanted:
        return {}
    scopes = {aggregate.scope for aggregate in wanted}
    if any(rule.mode != ControlMode.OFF for rule in policy.limits_for(use.action)):
        scopes.add(Scope.ACTOR)  # limits.check takes it next: keep the one order of locks
    _serialise(session, use, scopes)
    return {aggregate.key: _figure(session, use, aggregate, now) for aggregate in wanted}


def record(
    session: Session, use: Use, request_id: str, now: datetime, approval_id: str | None = None
) -> None:
    """Count this accepted use (in the caller's transaction), when it is recorded at all."""
    if not use.recorded:
        return
    session.add(
        UsageEvent(
            id=new_id("use"),
            actor_id=use.actor_id,
            action=use.action,
            amount_minor=use.amount_minor,
            request_id=request_id,
            occurred_at=now,
            target=use.target,
            customer=use.customer,
            approval_id=approval_id,
        )
    )


def _scope_filter(use: Use, scope: Scope) -> ColumnElement[bool] | None:
    if scope == Scope.ACTOR:
        return UsageEvent.actor_id == use.actor_id
    if scope == Scope.TARGET:
        return UsageEvent.target == use.target
    return UsageEvent.customer == use.customer if use.customer else None


def _figure(session: Session, use: Use, aggregate: Aggregate, now: datetime) -> int:
    count, total = 0, 0
    scoped = _scope_filter(use, aggregate.scope)
    if scoped is not None:  # a target with no customer has only this request
        count, total = session.execute(
            select(func.count(), func.coalesce(func.sum(func.abs(UsageEvent.amount_minor)), 0))
            .select_from(UsageEvent)
            .outerjoin(ApprovalRequest, ApprovalRequest.id == UsageEvent.approval_id)
            .where(
                UsageEvent.action == use.action,
                scoped,
                UsageEvent.occurred_at > now - parse_duration(aggregate.window),
                counting(now),
            )
        ).one()
    if aggregate.measure == Measure.COUNT:
        return int(count) + 1
    return int(total) + (use.amount_minor or 0)


def lock_key(use: Use, scope: Scope) -> str | None:
    """The advisory lock serialising `scope`'s figures of this action (None: nothing to lock).
    The actor's is the usage limits' lock, so both controls see one order of requests."""
    if scope == Scope.ACTOR:
        return f"opsgate-limit:{use.actor_id}:{use.action}"
    if scope == Scope.TARGET:
        return f"opsgate-aggregate:{use.action}:{use.target}"
    return f"opsgate-aggregate:{use.action}:{use.customer}" if use.customer else None


def _serialise(session: Session, use: Use, scopes: Iterable[Scope]) -> None:
    if session.get_bind().dialect.name != "postgresql":
        return  # SQLite: the write transaction already holds the database's one write lock
    order = [Scope.ACTOR, Scope.TARGET, Scope.CUSTOMER]
    for scope in sorted(set(scopes), key=order.index):
        key = lock_key(use, scope)
        if key is not None:
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
