"""Everything known about one request, in order: its audit records, the approval it opened
(request, decisions, execution, expiry), the calls it made to remote backends and the
webhook events it caused. Read by `opsgate trace`.

A request is named by its request ID (or an approved request's execution request ID), by a
W3C trace ID (every request of that trace), or by an approval ID (`apr_…`, the whole story).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select
from sqlalchemy.orm import Session

from opsgate.core.audit.search import as_dict
from opsgate.core.tracing import is_trace_id
from opsgate.db.models import (
    ApprovalDecision,
    ApprovalRequest,
    AuditRecord,
    BackendCall,
    OutboxEvent,
)

# Per kind of record; a report that reaches it says so (`truncated`).
MAX_ROWS = 1000
_NO_ANCHOR = 2**63


class EventKind:
    AUDIT = "audit"
    APPROVAL = "approval"
    DECISION = "decision"
    BACKEND_CALL = "backend_call"
    OUTBOX = "outbox"


@dataclass(frozen=True)
class TraceEvent:
    """One line of the report. `what` and `result` are short texts for a table; `ids` names
    the request, execution, approval, trace and record; `detail` is the whole record."""

    at: datetime
    kind: str
    what: str
    result: str
    ids: dict[str, str]
    detail: dict[str, Any]
    # Ties in time (one transaction, a frozen clock) are broken by the audit sequence the
    # event belongs next to, then by `rank` (before it, the record itself, after it).
    anchor: int = _NO_ANCHOR
    rank: int = 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "kind": self.kind,
            "what": self.what,
            "result": self.result,
            "ids": self.ids,
            "detail": self.detail,
        }


@dataclass
class TraceReport:
    key: str
    events: list[TraceEvent] = field(default_factory=list)
    request_ids: set[str] = field(default_factory=set)
    approval_ids: set[str] = field(default_factory=set)
    trace_ids: set[str] = field(default_factory=set)
    truncated: bool = False

    @property
    def found(self) -> bool:
        return bool(self.events)


def gather(session: Session, key: str, *, limit: int = MAX_ROWS) -> TraceReport:
    """The report for `key` (request ID, execution request ID, trace ID or approval ID),
    events oldest first. Empty (`found` false) when nothing mentions `key`. Reads only."""
    key = key.strip()
    report = TraceReport(key, request_ids={key})
    if is_trace_id(key):
        report.trace_ids.add(key)
    if key.startswith("apr_"):
        report.approval_ids.add(key)

    # First pass: what names the key directly, to learn the approvals and (for a trace) the
    # requests involved.
    for row in _audit(session, report, limit):
        if row.approval_id:
            report.approval_ids.add(row.approval_id)
        if row.trace_id in report.trace_ids:
            report.request_ids.add(row.request_id)
    if report.trace_ids:
        for call in _calls(session, report, limit):
            report.request_ids.add(call.request_id)
        for event in _outbox(session, report, limit):
            if event.request_id:
                report.request_ids.add(event.request_id)
    approvals = _approvals(session, report, limit)
    for approval in approvals:
        report.approval_ids.add(approval.id)
        report.request_ids.add(approval.request_id)
        if approval.execution_request_id:
            report.request_ids.add(approval.execution_request_id)

    audit_rows = _audit(session, report, limit)
    calls = _calls(session, report, limit)
    outbox = _outbox(session, report, limit)
    report.truncated = any(len(rows) > limit for rows in (audit_rows, calls, outbox, approvals))
    audit_rows, calls, outbox = audit_rows[:limit], calls[:limit], outbox[:limit]

    events = [_audit_event(row) for row in audit_rows]
    for approval in approvals[:limit]:
        events.append(_approval_event(approval, audit_rows))
        events.extend(_decision_event(approval, d, audit_rows) for d in approval.decisions)
    events.extend(_call_event(call, audit_rows) for call in calls)
    events.extend(_outbox_event(event, audit_rows) for event in outbox)
    report.events = sorted(events, key=lambda e: (e.at, e.anchor, e.rank))
    return report


# --- queries ----------------------------------------------------------------------------


def _in(column: Any, values: Iterable[str]) -> ColumnElement[bool]:
    values = sorted(values)
    return column.in_(values) if values else false()


def _audit(session: Session, report: TraceReport, limit: int) -> list[AuditRecord]:
    stmt = (
        select(AuditRecord)
        .where(
            or_(
                _in(AuditRecord.request_id, report.request_ids),
                _in(AuditRecord.execution_request_id, report.request_ids),
                _in(AuditRecord.approval_id, report.approval_ids),
                _in(AuditRecord.trace_id, report.trace_ids),
            )
        )
        .order_by(AuditRecord.seq)
        .limit(limit + 1)
    )
    return list(session.scalars(stmt))


def _approvals(session: Session, report: TraceReport, limit: int) -> list[ApprovalRequest]:
    stmt = (
        select(ApprovalRequest)
        .where(
            or_(
                _in(ApprovalRequest.id, report.approval_ids),
                _in(ApprovalRequest.request_id, report.request_ids),
                _in(ApprovalRequest.execution_request_id, report.request_ids),
            )
        )
        .order_by(ApprovalRequest.created_at, ApprovalRequest.id)
        .limit(limit + 1)
    )
    return list(session.scalars(stmt))


def _calls(session: Session, report: TraceReport, limit: int) -> list[BackendCall]:
    stmt = (
        select(BackendCall)
        .where(
            or_(
                _in(BackendCall.request_id, report.request_ids),
                _in(BackendCall.execution_request_id, report.request_ids),
                _in(BackendCall.approval_id, report.approval_ids),
                _in(BackendCall.trace_id, report.trace_ids),
            )
        )
        .order_by(BackendCall.started_at, BackendCall.id)
        .limit(limit + 1)
    )
    return list(session.scalars(stmt))


def _outbox(session: Session, report: TraceReport, limit: int) -> list[OutboxEvent]:
    stmt = (
        select(OutboxEvent)
        .where(
            or_(
                _in(OutboxEvent.request_id, report.request_ids),
                _in(OutboxEvent.trace_id, report.trace_ids),
            )
        )
        .order_by(OutboxEvent.created_at, OutboxEvent.id)
        .limit(limit + 1)
    )
    return list(session.scalars(stmt))


# --- events -----------------------------------------------------------------------------


def _ids(**ids: str | None) -> dict[str, str]:
    return {name: value for name, value in ids.items() if value}


def _audit_event(row: AuditRecord) -> TraceEvent:
    actor = f" by {row.actor_name}" if row.actor_name else ""
    target = f" {row.target}" if row.target else ""
    result = f"{row.result} ({row.error_code})" if row.error_code else row.result
    return TraceEvent(
        at=row.occurred_at,
        kind=EventKind.AUDIT,
        what=f"{row.action}{target}{actor}",
        result=result,
        ids=_ids(
            audit=row.id,
            request=row.request_id,
            execution=row.execution_request_id,
            approval=row.approval_id,
            trace=row.trace_id,
        ),
        detail=as_dict(row) | {"trace_id": row.trace_id},
        anchor=row.seq,
    )


def _first_seq(rows: list[AuditRecord], **match: Any) -> int:
    for row in rows:
        if all(getattr(row, name) == value for name, value in match.items()):
            return row.seq
    return _NO_ANCHOR


def _approval_event(approval: ApprovalRequest, rows: list[AuditRecord]) -> TraceEvent:
    return TraceEvent(
        at=approval.created_at,
        kind=EventKind.APPROVAL,
        what=f"approval of {approval.action} {approval.target} asked by {approval.requester_name}",
        result=f"now {approval.status}",
        ids=_ids(
            approval=approval.id,
            request=approval.request_id,
            execution=approval.execution_request_id,
        ),
        detail={
            "id": approval.id,
            "action": approval.action,
            "target": approval.target,
            "requester": {"id": approval.requester_id, "name": approval.requester_name},
            "status": approval.status,
            "status_detail": approval.status_detail,
            "quorum": approval.quorum,
            "approver_roles": approval.approver_roles,
            "created_at": approval.created_at.isoformat(),
            "expires_at": approval.expires_at.isoformat(),
            "decided_at": _iso(approval.decided_at),
            "executed_at": _iso(approval.executed_at),
            "execution_request_id": approval.execution_request_id,
            "error_code": approval.error_code,
        },
        anchor=_first_seq(rows, approval_id=approval.id),
        rank=0,
    )


def _decision_event(
    approval: ApprovalRequest, decision: ApprovalDecision, rows: list[AuditRecord]
) -> TraceEvent:
    recorded = "approved" if decision.decision == "approve" else "rejected"
    return TraceEvent(
        at=decision.decided_at,
        kind=EventKind.DECISION,
        what=f"{decision.decision} by {decision.approver_name}",
        result=recorded,
        ids=_ids(approval=approval.id, request=decision.request_id),
        detail={
            "id": decision.id,
            "approval_id": approval.id,
            "approver": {
                "id": decision.approver_id,
                "name": decision.approver_name,
                "roles": decision.approver_roles,
            },
            "decision": decision.decision,
            "decided_at": decision.decided_at.isoformat(),
            "request_id": decision.request_id,
        },
        anchor=_first_seq(
            rows, approval_id=approval.id, actor_id=decision.approver_id, result=recorded
        ),
        rank=0,
    )


def _call_event(call: BackendCall, rows: list[AuditRecord]) -> TraceEvent:
    # The action's audit record is written after its backend call returned.
    anchor = (
        _first_seq(rows, execution_request_id=call.execution_request_id, action=call.action)
        if call.execution_request_id
        else _first_seq(rows, request_id=call.request_id, action=call.action)
    )
    status = f"{call.status} (HTTP {call.http_status})" if call.http_status else call.status
    return TraceEvent(
        at=call.started_at,
        kind=EventKind.BACKEND_CALL,
        what=f"{call.backend}: {call.action} {call.target}",
        result=status,
        ids=_ids(
            call=call.id,
            request=call.request_id,
            execution=call.execution_request_id,
            approval=call.approval_id,
            trace=call.trace_id,
        ),
        detail={
            "id": call.id,
            "backend": call.backend,
            "action": call.action,
            "target": call.target,
            "actor_id": call.actor_id,
            "status": call.status,
            "attempts": call.attempts,
            "http_status": call.http_status,
            "idempotency_key": call.idempotency_key,
            "request": call.request,
            "response": call.response,
            "error": call.error,
            "started_at": call.started_at.isoformat(),
            "finished_at": _iso(call.finished_at),
            "reconciled_at": _iso(call.reconciled_at),
            "duration_ms": call.duration_ms,
        },
        anchor=anchor,
        rank=0,
    )


def _outbox_event(event: OutboxEvent, rows: list[AuditRecord]) -> TraceEvent:
    # Written in the transaction of the change it reports, so next to that change's record.
    anchor = max(
        (row.seq for row in rows if event.request_id in (row.request_id, row.execution_request_id)),
        default=_NO_ANCHOR,
    )
    return TraceEvent(
        at=event.created_at,
        kind=EventKind.OUTBOX,
        what=f"webhook {event.event_type} to {event.subscription}",
        result=event.status,
        ids=_ids(event=event.event_id, request=event.request_id, trace=event.trace_id),
        detail={
            "id": event.id,
            "event_id": event.event_id,
            "event_type": event.event_type,
            "subscription": event.subscription,
            "status": event.status,
            "attempts": event.attempts,
            "last_status": event.last_status,
            "last_error": event.last_error,
            "created_at": event.created_at.isoformat(),
            "delivered_at": _iso(event.delivered_at),
        },
        anchor=anchor,
        rank=2,
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
