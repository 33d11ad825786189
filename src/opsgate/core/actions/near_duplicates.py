"""Near-duplicate money movement, flagged for the reviewer and in the audit record (not
refused: there are real reasons).

- A repeat: the same action on the same target for the same amount within ten minutes, by
  anyone.
- A possible split: the same actor's earlier requests of the same action on the same target
  within a day, whatever their amounts, with the cumulative amount they and this request add
  up to. Only requests that still count (core/actions/aggregates.py) are listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.actions.aggregates import Use, counting
from opsgate.core.audit.records import AuditResult
from opsgate.core.durations import parse_duration
from opsgate.db.models import ApprovalRequest, AuditRecord, UsageEvent

WINDOW = timedelta(minutes=10)
SPLIT_WINDOW_TEXT = "24h"
SPLIT_WINDOW = parse_duration(SPLIT_WINDOW_TEXT)
_ACCEPTED = (AuditResult.SUCCEEDED.value, AuditResult.APPROVAL_REQUESTED.value)


def flags(
    session: Session, use: Use, payload: Mapping[str, Any], now: datetime
) -> dict[str, Any] | None:
    """The near-duplicate flags of this request (`near_duplicates`, `possible_split`), or
    None when there is nothing to flag."""
    found: dict[str, Any] = {}
    duplicates = find(session, use.action, use.target, payload, now)
    if duplicates:
        found["near_duplicates"] = duplicates
    split = find_split(session, use, now)
    if split is not None:
        found["possible_split"] = split
    return found or None


def find(
    session: Session, action: str, target: str, payload: Mapping[str, Any], now: datetime
) -> list[dict[str, Any]]:
    """Earlier accepted requests matching this one, newest first (one per original request)."""
    amount = payload.get("amount_minor")
    if amount is None:
        return []
    rows = session.execute(
        select(
            AuditRecord.id,
            AuditRecord.request_id,
            AuditRecord.approval_id,
            AuditRecord.actor_name,
            AuditRecord.occurred_at,
            AuditRecord.result,
            AuditRecord.parameters,
        )
        .where(
            AuditRecord.target == target,
            AuditRecord.action == action,
            AuditRecord.result.in_(_ACCEPTED),
            AuditRecord.occurred_at >= now - WINDOW,
        )
        .order_by(AuditRecord.seq.desc())
        .limit(100)
    )
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        if (row.parameters or {}).get("amount_minor") != amount or row.request_id in found:
            continue
        found[row.request_id] = {
            "request_id": row.request_id,
            "audit_id": row.id,
            "approval_id": row.approval_id,
            "actor": row.actor_name,
            "at": row.occurred_at.isoformat(),
            "result": row.result,
        }
    return list(found.values())


def find_split(session: Session, use: Use, now: datetime) -> dict[str, Any] | None:
    """This actor's earlier counted requests of this action on this target within
    SPLIT_WINDOW, newest first, and the amount they add up to with this one; None when
    there are none or the action has no amount."""
    if use.amount_minor is None:
        return None
    rows = session.execute(
        select(
            UsageEvent.request_id,
            UsageEvent.approval_id,
            UsageEvent.amount_minor,
            UsageEvent.occurred_at,
        )
        .outerjoin(ApprovalRequest, ApprovalRequest.id == UsageEvent.approval_id)
        .where(
            UsageEvent.actor_id == use.actor_id,
            UsageEvent.action == use.action,
            UsageEvent.target == use.target,
            UsageEvent.occurred_at >= now - SPLIT_WINDOW,
            counting(now),
        )
        .order_by(UsageEvent.occurred_at.desc(), UsageEvent.id.desc())
        .limit(100)
    ).all()
    if not rows:
        return None
    earlier = [
        {
            "request_id": row.request_id,
            "approval_id": row.approval_id,
            "amount_minor": row.amount_minor,
            "at": row.occurred_at.isoformat(),
        }
        for row in rows
    ]
    total = sum(abs(row.amount_minor or 0) for row in rows) + use.amount_minor
    return {"window": SPLIT_WINDOW_TEXT, "cumulative_minor": total, "earlier": earlier}
