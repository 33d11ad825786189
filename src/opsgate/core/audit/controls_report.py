"""Evidence for switching a control from `monitor` to `enforce`: how often each control in
monitor mode would have fired, by action and by actor, over a period."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.actions.policy import ControlMode, Policy
from opsgate.core.audit.records import AuditResult
from opsgate.db.models import AuditRecord

_EVENTS = (AuditResult.WOULD_REQUIRE_APPROVAL.value, AuditResult.WOULD_BE_LIMITED.value)


def _control_of(row: AuditRecord) -> str:
    outcome = row.outcome or {}
    if row.result == AuditResult.WOULD_BE_LIMITED:
        return f"limit:{outcome.get('limit', {}).get('limit', '?')}"
    return "approval"


def report(session: Session, policy: Policy, *, since: datetime, until: datetime) -> dict[str, Any]:
    """Controls currently in monitor mode, each with how often it would have fired."""
    monitored: dict[tuple[str, str], dict[str, Any]] = {}
    for action, entry in sorted(policy.document.actions.items()):
        if entry.approval is not None and entry.approval.mode == ControlMode.MONITOR:
            monitored[(action, "approval")] = {"action": action, "control": "approval"}
        for rule in entry.limits:
            if rule.mode == ControlMode.MONITOR:
                monitored[(action, f"limit:{rule.name}")] = {
                    "action": action,
                    "control": f"limit:{rule.name}",
                }
    fired: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    names: dict[str, str] = {}
    rows = session.scalars(
        select(AuditRecord).where(
            AuditRecord.result.in_(_EVENTS),
            AuditRecord.occurred_at >= since,
            AuditRecord.occurred_at <= until,
        )
    )
    for row in rows:
        key = (row.action, _control_of(row))
        fired[key][row.actor_id or "?"] += 1
        names[row.actor_id or "?"] = row.actor_name or "?"
    controls = []
    for key in sorted(set(monitored) | set(fired)):
        by_actor = fired.get(key, Counter())
        controls.append(
            (monitored.get(key) or {"action": key[0], "control": key[1]})
            | {
                "currently_monitoring": key in monitored,
                "would_have_fired": sum(by_actor.values()),
                "by_actor": [
                    {"actor_id": actor, "actor": names[actor], "count": count}
                    for actor, count in by_actor.most_common()
                ],
            }
        )
    return {"controls": controls}
