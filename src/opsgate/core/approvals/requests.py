"""Opening an approval request: what is stored is exactly what will be reviewed and run."""

from __future__ import annotations

from pydantic import BaseModel

from opsgate.core.actions.policy import ApprovalRequirement
from opsgate.core.actions.registry import ActionContext, ActionSpec, TargetKind
from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.audit.records import json_safe
from opsgate.core.canonical import digest
from opsgate.core.ids import new_id
from opsgate.db.models import ApprovalRequest


def open_request(
    ctx: ActionContext,
    spec: ActionSpec,
    kind: TargetKind,
    obj: object,
    payload: BaseModel,
    target: str,
    requirement: ApprovalRequirement,
    policy_version: str,
) -> ApprovalRequest:
    """Add a pending approval request to the context's session (not committed).

    It records the payload and its hash, the target's state and version, the policy version
    and the preview's before/after, so that execution can refuse anything that changed.
    """
    assert spec.preview is not None  # the policy refuses approval rules without a preview
    snapshot = kind.snapshot(obj)
    change = spec.preview(ctx, obj, payload)
    stored_payload = payload.model_dump(mode="json")
    approval = ApprovalRequest(
        id=new_id("apr"),
        action=spec.name,
        target=target,
        payload=stored_payload,
        payload_hash=digest(stored_payload),
        reason=ctx.reason,
        requester_id=ctx.actor.id,
        requester_name=ctx.actor.name,
        request_id=ctx.request_id,
        policy_version=policy_version,
        target_snapshot=json_safe(snapshot),
        target_version=int(snapshot["version"]),
        proposed_change=json_safe({"before": change.before, "after": change.after}),
        rule=requirement.describe(),
        quorum=requirement.quorum,
        approver_roles=list(requirement.approver_roles),
        status=ApprovalStatus.PENDING.value,
        created_at=ctx.now,
        expires_at=ctx.now + requirement.expires_in,
    )
    ctx.session.add(approval)
    return approval
