"""`/approvals`: the reviewers' inbox, decisions, cancellation and approval metrics."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.policy import Capability
from opsgate.core.approvals import metrics as approval_metrics
from opsgate.core.approvals.gate import Decision, DecisionResult
from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.audit.redaction import redact, sensitive_fields
from opsgate.core.clock import as_utc
from opsgate.core.identity.actors import Actor
from opsgate.db.models import ApprovalRequest, AuditRecord
from opsgate.web.api.filters import FilterDate
from opsgate.web.deps import CurrentActor, OriginDep, ServicesDep
from opsgate.web.services import Services

router = APIRouter(tags=["approvals"])


class DecisionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    comment: str | None = Field(default=None, max_length=2000)


def _request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


def summary(approval: ApprovalRequest, services: Services, now: datetime) -> dict[str, Any]:
    spec = services.registry.get(approval.action)
    return {
        "id": approval.id,
        "action": approval.action,
        "action_label": spec.label if spec else approval.action,
        "target": approval.target,
        "status": approval.status,
        "requester": {"id": approval.requester_id, "name": approval.requester_name},
        "reason": approval.reason,
        "quorum": approval.quorum,
        "approver_roles": approval.approver_roles,
        "created_at": approval.created_at.isoformat(),
        "expires_at": approval.expires_at.isoformat(),
        "time_left_seconds": max(0, int((approval.expires_at - now).total_seconds()))
        if approval.status == ApprovalStatus.PENDING
        else 0,
    }


def detail(approval: ApprovalRequest, actor: Actor, services: Services) -> dict[str, Any]:
    now = services.clock.now()
    spec = services.registry.get(approval.action)
    # Outside any transaction: a remote kind's record is read from its service.
    current = services.gateway.target_state(approval.target)
    with services.db.reading() as session:
        history = list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.approval_id == approval.id)
                .order_by(AuditRecord.seq)
            )
        )
    approvals = sorted({d.approver_id for d in approval.decisions if d.decision == "approve"})
    return summary(approval, services, now) | {
        "original_request_id": approval.request_id,
        "payload": redact(approval.payload, sensitive_fields(spec.payload_model) if spec else ()),
        "payload_hash": approval.payload_hash,
        "policy_version": approval.policy_version,
        "policy_current": approval.policy_version == services.policy.version,
        "rule": approval.rule,
        "target_snapshot": approval.target_snapshot,
        "target_current": current,
        # Before it runs: has someone else changed the target? (After, it changed by running.)
        "target_changed": (current is None or current.get("version") != approval.target_version)
        if approval.status in (ApprovalStatus.PENDING, ApprovalStatus.APPROVED)
        else None,
        "proposed_change": approval.proposed_change,
        "approvals": len(approvals),
        "decisions": [
            {
                "approver": {"id": d.approver_id, "name": d.approver_name},
                "decision": d.decision,
                "comment": d.comment,
                "decided_at": d.decided_at.isoformat(),
                "request_id": d.request_id,
            }
            for d in approval.decisions
        ],
        "status_detail": approval.status_detail,
        "execution": {
            "request_id": approval.execution_request_id,
            "executed_at": approval.executed_at.isoformat() if approval.executed_at else None,
            "result": approval.result,
            "error": {"code": approval.error_code, "message": approval.error_message}
            if approval.error_code
            else None,
        },
        "history": [
            {
                "at": row.occurred_at.isoformat(),
                "result": row.result,
                "actor": row.actor_name,
                "request_id": row.request_id,
                "execution_request_id": row.execution_request_id,
                "error_code": row.error_code,
            }
            for row in history
        ],
        "viewer": {
            "is_requester": actor.id == approval.requester_id,
            "may_decide": actor.id != approval.requester_id
            and approval.target != f"user:{actor.id}"
            and services.policy.may_approve(actor.roles, approval.action)
            and approval.status == ApprovalStatus.PENDING
            and actor.id not in {d.approver_id for d in approval.decisions},
        },
    }


def _comment(body: DecisionBody | None) -> str | None:
    return body.comment if body else None


def _decision_body(result: DecisionResult) -> dict[str, Any]:
    return {
        "approval_id": result.approval_id,
        "status": result.status,
        "request_id": result.request_id,
        "approvals": result.approvals,
        "quorum": result.quorum,
        "execution_request_id": result.execution_request_id,
        "result": result.result,
        "audit_id": result.audit_id,
    }


@router.get("/approvals")
def list_approvals(
    request: Request,
    actor: CurrentActor,
    services: ServicesDep,
    status: Annotated[ApprovalStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> dict[str, Any]:
    """Requests this actor may see (their own, those they may approve, or all for auditors)."""
    now = services.clock.now()
    with services.db.reading() as session:
        rows = services.approvals.visible(session, actor, status=status, limit=limit)
        items = [summary(row, services, now) for row in rows]
    return {"request_id": _request_id(request), "items": items}


@router.get("/approvals/metrics")
def metrics(
    request: Request,
    services: ServicesDep,
    actor: CurrentActor,
    origin: OriginDep,
    since: FilterDate = None,
    until: FilterDate = None,
) -> dict[str, Any]:
    """Per action: volumes, approval rate, time to decision, rubber-stamp signal, approvers."""
    services.require(actor, Capability.AUDIT_READ, origin)
    until = as_utc(until) or services.clock.now()
    since = as_utc(since) or until - timedelta(days=30)
    with services.db.reading() as session:
        report = approval_metrics.report(session, since=since, until=until)
    return {
        "request_id": _request_id(request),
        "since": since.isoformat(),
        "until": until.isoformat(),
        "actions": report,
    }


@router.get("/approvals/{approval_id}")
def get_approval(
    approval_id: str,
    request: Request,
    actor: CurrentActor,
    services: ServicesDep,
    origin: OriginDep,
) -> dict[str, Any]:
    """Everything a reviewer needs: the request, the target then and now, the change,
    decisions, time left and status history."""
    approval = services.approvals.open(approval_id, actor, origin)
    return {"request_id": _request_id(request)} | detail(approval, actor, services)


STEP_UP_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "description": "`unauthenticated` (no valid bearer token), or `step_up_required`: a "
        "money-moving request and no valid `X-Step-Up` grant (the problem's `step_up` says "
        "why: `no_grant`, `unknown_grant`, `other_user`, `other_token`, `expired`, `used`). "
        "Audited; nothing is decided."
    }
}


@router.post("/approvals/{approval_id}/approve", responses=STEP_UP_RESPONSES)
async def approve(
    approval_id: str,
    actor: CurrentActor,
    services: ServicesDep,
    origin: OriginDep,
    body: DecisionBody | None = None,
    x_step_up: Annotated[
        str | None,
        Header(
            max_length=128,
            description="A step-up grant from `POST /auth/step-up`; required to approve a "
            "money-moving request, spent by it.",
        ),
    ] = None,
) -> dict[str, Any]:
    """Approve; on quorum the request executes at once. A money-moving request needs a
    step-up grant (`POST /auth/step-up`) in `X-Step-Up`: without a valid one, 401
    `step_up_required` (audited), and nothing is decided."""
    result = await run_in_threadpool(
        partial(
            services.approvals.decide,
            approval_id,
            actor,
            Decision.APPROVE,
            _comment(body),
            origin,
            step_up=x_step_up,
        )
    )
    return _decision_body(result)


@router.post("/approvals/{approval_id}/reject")
async def reject(
    approval_id: str,
    actor: CurrentActor,
    services: ServicesDep,
    origin: OriginDep,
    body: DecisionBody | None = None,
) -> dict[str, Any]:
    result = await run_in_threadpool(
        services.approvals.decide, approval_id, actor, Decision.REJECT, _comment(body), origin
    )
    return _decision_body(result)


@router.post("/approvals/{approval_id}/cancel")
async def cancel(
    approval_id: str, actor: CurrentActor, services: ServicesDep, origin: OriginDep
) -> dict[str, Any]:
    result = await run_in_threadpool(services.approvals.cancel, approval_id, actor, origin)
    return _decision_body(result)
