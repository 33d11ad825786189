"""How approvals are really used: volumes, approval rate, time to decision, and the
rubber-stamp signal (decisions made within seconds of first opening a request)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core.approvals.states import ApprovalStatus
from opsgate.db.models import ApprovalDecision, ApprovalRequest, ApprovalView

RUBBER_STAMP_WITHIN = timedelta(seconds=10)
S = ApprovalStatus
_REACHED_APPROVAL = {S.APPROVED, S.EXECUTING, S.SUCCEEDED, S.FAILED, S.STALE}


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    ordered = sorted(values)
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(fraction * 100) - 1]


def report(session: Session, *, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """One entry per action with requests created in [since, until]."""
    requests = list(
        session.scalars(
            select(ApprovalRequest).where(
                ApprovalRequest.created_at >= since, ApprovalRequest.created_at <= until
            )
        )
    )
    ids = [r.id for r in requests]
    decisions = (
        list(session.scalars(select(ApprovalDecision).where(ApprovalDecision.approval_id.in_(ids))))
        if ids
        else []
    )
    views = (
        {
            (v.approval_id, v.viewer_id): v.first_viewed_at
            for v in session.scalars(select(ApprovalView).where(ApprovalView.approval_id.in_(ids)))
        }
        if ids
        else {}
    )
    by_request = {r.id: r for r in requests}
    per_action: dict[str, list[ApprovalRequest]] = defaultdict(list)
    for r in requests:
        per_action[r.action].append(r)
    decisions_by_action: dict[str, list[ApprovalDecision]] = defaultdict(list)
    for d in decisions:
        decisions_by_action[by_request[d.approval_id].action].append(d)

    out = []
    for action in sorted(per_action):
        rows = per_action[action]
        statuses = [S(r.status) for r in rows]
        approved = sum(s in _REACHED_APPROVAL for s in statuses)
        rejected = statuses.count(S.REJECTED)
        waits = [
            (r.decided_at - r.created_at).total_seconds()
            for r in rows
            if r.decided_at is not None and S(r.status) not in (S.CANCELLED, S.EXPIRED)
        ]
        approvers: dict[str, dict[str, Any]] = {}
        quick = unseen = 0
        for d in decisions_by_action[action]:
            person = approvers.setdefault(
                d.approver_id,
                {
                    "id": d.approver_id,
                    "name": d.approver_name,
                    "approved": 0,
                    "rejected": 0,
                    "within_10s_of_opening": 0,
                },
            )
            person["approved" if d.decision == "approve" else "rejected"] += 1
            opened = views.get((d.approval_id, d.approver_id))
            if opened is None:
                unseen += 1
            elif d.decided_at - opened <= RUBBER_STAMP_WITHIN:
                quick += 1
                person["within_10s_of_opening"] += 1
        out.append(
            {
                "action": action,
                "requested": len(rows),
                "pending": statuses.count(S.PENDING),
                "approved": approved,
                "rejected": rejected,
                "cancelled": statuses.count(S.CANCELLED),
                "expired": statuses.count(S.EXPIRED),
                "stale": statuses.count(S.STALE),
                "succeeded": statuses.count(S.SUCCEEDED),
                "failed": statuses.count(S.FAILED),
                "approval_rate": round(approved / (approved + rejected), 4)
                if approved + rejected
                else None,
                "time_to_decision_seconds": {
                    "median": statistics.median(waits) if waits else None,
                    "p90": _percentile(waits, 0.9),
                },
                "decisions_within_10s_of_opening": quick,
                "decisions_without_opening": unseen,
                "approvers": sorted(approvers.values(), key=lambda p: str(p["name"])),
            }
        )
    return out
