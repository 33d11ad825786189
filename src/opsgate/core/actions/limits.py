"""Usage limits: per actor and action, a count or a summed amount within a rolling window.

Checked in the action's transaction, after the target is locked and before the approval
gate. Concurrent requests of one actor for one action are serialised (PostgreSQL: a
transaction-scoped advisory lock; SQLite: its single writer), so two of them cannot both
squeeze under a limit. Each accepted use (executed, or held for approval) is recorded in the
same transaction as its effect (core/actions/aggregates.py `record`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from opsgate.core.actions.policy import ControlMode, LimitRule, Policy
from opsgate.db.models import UsageEvent


@dataclass(frozen=True)
class LimitHit:
    """A limit this request would break: what was used in the window and what it asked."""

    rule: LimitRule
    used: int
    requested: int

    def describe(self) -> dict[str, Any]:
        return self.rule.describe() | {"used": self.used, "requested": self.requested}


def _amount(payload: Mapping[str, Any], field: str) -> int:
    value = payload.get(field)
    return abs(int(value)) if isinstance(value, int) else 0


def check(
    session: Session,
    policy: Policy,
    action: str,
    actor_id: str,
    payload: Mapping[str, Any],
    now: datetime,
) -> list[LimitHit]:
    """The limits (mode monitor or enforce) this request would break."""
    rules = [r for r in policy.limits_for(action) if r.mode != ControlMode.OFF]
    if not rules:
        return []
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"opsgate-limit:{actor_id}:{action}"},
        )
    hits = []
    for rule in rules:
        count, total = session.execute(
            select(
                func.count(), func.coalesce(func.sum(func.abs(UsageEvent.amount_minor)), 0)
            ).where(
                UsageEvent.actor_id == actor_id,
                UsageEvent.action == action,
                UsageEvent.occurred_at > now - rule.period,
            )
        ).one()
        if rule.max_count is not None and count + 1 > rule.max_count:
            hits.append(LimitHit(rule, int(count), 1))
        amount = _amount(payload, rule.amount_field)
        if rule.max_amount_minor is not None and total + amount > rule.max_amount_minor:
            hits.append(LimitHit(rule, int(total), amount))
    return hits
