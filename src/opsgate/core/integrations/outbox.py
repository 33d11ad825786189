"""The webhook outbox: notifications written in the transaction of the change they report.

An event is one row per subscribed webhook in `outbox_events`, added to the caller's session
and committed (or rolled back) with the change itself, so no event is lost and none is sent
for a change that did not happen. core/integrations/webhooks.py delivers the rows after commit.

Approval events carry what the approvals API shows a reviewer, no more: the payload redacted
as `GET /approvals/{id}` shows it, free text (reason, comment) with card numbers and national
IDs masked. `approval.decided` is written once per decision (approve or reject), so a quorum
of two produces two, the first with status `pending`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.audit.redaction import mask_text, redact
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.ids import new_id
from opsgate.core.integrations.config import Integrations
from opsgate.db.models import ApprovalDecision, ApprovalRequest, OutboxEvent

# core/approvals/gate.py `Decision.APPROVE` (which imports this module through the gateway).
APPROVE = "approve"


class EventType(StrEnum):
    REQUESTED = "approval.requested"
    DECIDED = "approval.decided"
    EXECUTED = "approval.executed"
    EXPIRED = "approval.expired"
    # A signed head of the audit chain (core/audit/anchoring.py), for an external log to keep.
    AUDIT_ANCHOR = "audit.anchor"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


def enqueue(
    session: Session,
    integrations: Integrations,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    request_id: str | None,
    trace_id: str | None,
    now: datetime,
) -> list[OutboxEvent]:
    """Add one pending row per webhook subscribed to `event_type` to `session` (not
    committed), all sharing one event ID; add nothing when nobody subscribes.

    `payload` is the event's own part (e.g. `{"approval": {...}}`); the envelope (`id`,
    `type`, `occurred_at`, `request_id`, `trace_id`) is added here. It must be JSON-safe.
    """
    hooks = integrations.subscribers(event_type)
    if not hooks:
        return []
    event_id = new_id("evt")
    body = {
        "id": event_id,
        "type": event_type,
        "occurred_at": now.isoformat(),
        "request_id": request_id,
        "trace_id": trace_id,
        **payload,
    }
    rows = [
        OutboxEvent(
            id=new_id("obx"),
            event_id=event_id,
            event_type=event_type,
            subscription=hook.name,
            payload=body,
            request_id=request_id,
            trace_id=trace_id,
            status=OutboxStatus.PENDING.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for hook in hooks
    ]
    session.add_all(rows)
    return rows


def notify_approval(
    session: Session,
    integrations: Integrations,
    event_type: EventType,
    approval: ApprovalRequest,
    *,
    origin: Origin,
    now: datetime,
    sensitive: Iterable[str] = (),
    decided_by: Actor | None = None,
    decision: str | None = None,
    comment: str | None = None,
) -> None:
    """Enqueue `event_type` about `approval` in the caller's transaction (nothing when no
    webhook subscribes). `sensitive` names the payload fields to redact; `decided_by`,
    `decision` and `comment` describe the decision of an `approval.decided` event."""
    if not integrations.subscribers(event_type):
        return
    view = approval_view(session, approval, sensitive)
    if event_type == EventType.DECIDED and decided_by is not None:
        view["decision"] = {
            "decision": decision,
            "decided_by": {"id": decided_by.id, "name": decided_by.name},
            "comment": mask_text(comment) if comment else None,
        }
    if event_type == EventType.EXECUTED:
        view["execution"] = execution_view(approval)
    enqueue(
        session,
        integrations,
        event_type.value,
        {"approval": view},
        request_id=origin.request_id,
        trace_id=origin.trace_id,
        now=now,
    )


def approval_view(
    session: Session, approval: ApprovalRequest, sensitive: Iterable[str] = ()
) -> dict[str, Any]:
    """The approval as a webhook shows it: what `GET /approvals/{id}` shows, redacted."""
    # The request may not be flushed yet (approval.requested): count without flushing it.
    with session.no_autoflush:
        approvals = int(
            session.scalar(
                select(func.count(func.distinct(ApprovalDecision.approver_id))).where(
                    ApprovalDecision.approval_id == approval.id,
                    ApprovalDecision.decision == APPROVE,
                )
            )
            or 0
        )
    return {
        "id": approval.id,
        "action": approval.action,
        "target": approval.target,
        "status": approval.status,
        "requester": {"id": approval.requester_id, "name": approval.requester_name},
        "reason": mask_text(approval.reason),
        "payload": redact(approval.payload, sensitive),
        "quorum": approval.quorum,
        "approvals": approvals,
        "created_at": approval.created_at.isoformat(),
        "expires_at": approval.expires_at.isoformat(),
    }


def execution_view(approval: ApprovalRequest) -> dict[str, Any]:
    """How a controlled execution ended: succeeded (with its result), failed or stale."""
    error: dict[str, Any] | None = None
    if approval.error_code:
        error = {"code": approval.error_code, "message": approval.error_message}
    elif approval.status == ApprovalStatus.STALE:
        error = {"code": "stale_approval", "message": approval.status_detail}
    return {
        "status": approval.status,
        "request_id": approval.execution_request_id,
        "executed_at": approval.executed_at.isoformat() if approval.executed_at else None,
        "result": approval.result,
        "error": error,
    }
