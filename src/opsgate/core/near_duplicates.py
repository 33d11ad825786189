"""Near-duplicate money movement: the same action on the same target for the same amount
within ten minutes, by anyone. Not refused (there are real reasons), but flagged for the
reviewer and in the audit record."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.audit import AuditResult
from opsgate.db.models import AuditRecord

WINDOW = timedelta(minutes=10)
_ACCEPTED = (AuditResult.SUCCEEDED.value, AuditResult.APPROVAL_REQUESTED.value)


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
