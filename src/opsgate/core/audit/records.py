"""Writing the audit trail. Only the control layer calls `record`; handlers never do.

A record is appended to the hash chain in the caller's session, so that it commits, or rolls
back, together with the change it describes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from opsgate.core.audit.chain import append
from opsgate.core.audit.redaction import mask_text, redact
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.ids import new_id
from opsgate.db.models import AuditRecord


class AuditResult(StrEnum):
    """What happened, as recorded. `denied`: authentication or permission refused;
    `invalid`: the request itself was malformed (action, payload or target)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DENIED = "denied"
    INVALID = "invalid"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    STALE = "stale"
    WOULD_REQUIRE_APPROVAL = "would_require_approval"
    LIMITED = "limited"
    WOULD_BE_LIMITED = "would_be_limited"
    REPLAYED = "replayed"
    # A remote backend's answer never came (core/integrations/remote.py): neither success nor
    # failure.
    UNKNOWN = "unknown"
    # `opsgate reconcile` learned what became of an unknown backend call.
    RECONCILED = "reconciled"


@dataclass(frozen=True)
class AuditEntry:
    """The fields of one audit record, gathered before it is written."""

    action: str
    result: AuditResult
    target: str | None = None
    parameters: Mapping[str, Any] | None = None
    reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    before: Mapping[str, Any] | None = None
    after: Mapping[str, Any] | None = None
    outcome: Mapping[str, Any] | None = None
    approval_id: str | None = None
    execution_request_id: str | None = None
    flags: Mapping[str, Any] | None = None


def json_safe(value: Any) -> Any:
    """Return `value` as plain JSON types (dates become ISO strings)."""
    return json.loads(json.dumps(value, default=str))


def _clean(value: Mapping[str, Any] | None) -> Any:
    return redact(json_safe(value)) if value is not None else None


def record(
    session: Session,
    entry: AuditEntry,
    *,
    actor: Actor | None,
    origin: Origin,
    policy_version: str | None,
    now: datetime,
) -> AuditRecord:
    """Add one audit record to `session` (flushed, not committed) and return it."""
    row = AuditRecord(
        id=new_id("aud"),
        occurred_at=now,
        request_id=origin.request_id,
        execution_request_id=entry.execution_request_id,
        approval_id=entry.approval_id,
        actor_id=actor.id if actor else None,
        actor_name=actor.name if actor else None,
        actor_roles=sorted(actor.roles) if actor else None,
        credential_id=actor.credential_id if actor else None,
        origin_ip=origin.ip,
        user_agent=origin.user_agent[:512] if origin.user_agent else None,
        action=entry.action[:128],
        target=entry.target[:200] if entry.target else None,
        parameters=_clean(entry.parameters),
        reason=mask_text(entry.reason) if entry.reason else entry.reason,
        result=entry.result.value,
        error_code=entry.error_code,
        error_message=mask_text(entry.error_message) if entry.error_message else None,
        before=_clean(entry.before),
        after=_clean(entry.after),
        outcome=_clean(entry.outcome),
        policy_version=policy_version,
        trace_id=origin.trace_id,
        client_request_id=origin.client_request_id,
        flags=_clean(entry.flags) if entry.flags else None,
    )
    return append(session, row)
