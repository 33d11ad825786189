"""Actions that run in a remote backend: the calls' records and what their answers mean.

A remote action takes the same path as an in-process one up to the handler. Then, instead of
one transaction around handler and audit record, it takes two around the network call:

    1. (the action's transaction) a `backend_calls` row `pending`, the limits' use, commit
    2. the signed HTTP call, retried within its bounds (core/integrations/backends.py), no
    transaction open
    3. (a new transaction) the row settled, the target's new state mirrored into the local
       read model, the audit record (`succeeded`, `failed` or `unknown`) and the stored
       idempotent answer, commit

No database lock is held across the network. A process that dies between 1 and 3 leaves the
row `pending`; a timeout leaves it `unknown`. `opsgate reconcile` (core/integrations/reconcile.py)
settles
both by asking the backend with the same idempotency key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from opsgate.core import metrics
from opsgate.core.actions.registry import Registry, TargetRef
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.audit.redaction import redact
from opsgate.core.errors import OpsgateError
from opsgate.core.ids import new_id
from opsgate.core.integrations.backends import (
    BackendAnswer,
    BackendClient,
    BackendOutcome,
    BackendRequest,
)
from opsgate.core.integrations.config import Backend
from opsgate.db.models import BackendCall

log = structlog.get_logger("opsgate.remote")

# Statuses of a backend call (`backend_calls.status`).
PENDING = "pending"
SUCCEEDED = "succeeded"
REJECTED = "rejected"
UNAVAILABLE = "unavailable"
UNKNOWN = "unknown"
NOT_EXECUTED = "not_executed"
SETTLED = frozenset({SUCCEEDED, REJECTED, UNAVAILABLE, NOT_EXECUTED})


def request_record(request: BackendRequest, sensitive: frozenset[str]) -> dict[str, Any]:
    """What is kept of a request (for reconciliation and `opsgate trace`): no secrets, the
    payload redacted like the audit record's parameters."""
    return {
        "action": request.action,
        "target": request.target,
        "payload": redact(dict(request.payload), sensitive),
        "reason": request.reason,
        "actor": {
            "id": request.actor_id,
            "name": request.actor_name,
            "roles": sorted(request.actor_roles),
        },
    }


def begin(
    session: Session,
    backend: Backend,
    request: BackendRequest,
    sensitive: frozenset[str],
    now: datetime,
) -> str:
    """Record a call about to be made, in the caller's transaction; return its ID."""
    call = BackendCall(
        id=new_id("bcl"),
        backend=backend.name,
        action=request.action,
        target=request.target,
        actor_id=request.actor_id,
        request_id=request.request_id,
        execution_request_id=request.execution_request_id,
        approval_id=request.approval_id,
        trace_id=request.trace_id,
        idempotency_key=request.idempotency_key,
        status=PENDING,
        attempts=0,
        request=request_record(request, sensitive),
        started_at=now,
    )
    session.add(call)
    session.flush()
    return call.id


def call(client: BackendClient, backend: Backend, request: BackendRequest) -> BackendAnswer:
    """The client's answer; a failure of the client itself (a bug, not the network) means
    the request may or may not have left: unknown, to be reconciled, never a guess."""
    try:
        return client.call(backend, request)
    except Exception as exc:
        log.error("backend_client_failed", backend=backend.name, exc_info=exc)
        return BackendAnswer(
            outcome=BackendOutcome.UNKNOWN,
            error=f"the client failed ({type(exc).__name__})",
            backend=backend.name,
        )


def status_of(answer: BackendAnswer) -> str:
    return {
        "succeeded": SUCCEEDED,
        "rejected": REJECTED,
        "unavailable": UNAVAILABLE,
    }.get(answer.outcome, UNKNOWN)


def _response_record(body: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return redact(dict(body)) if body is not None else None


def settle(
    session: Session,
    registry: Registry,
    call_id: str,
    answer: BackendAnswer,
    now: datetime,
) -> BackendCall:
    """Record the answer on the call (row-locked) and, on success, mirror the state the
    backend reports into the local read model. In the caller's transaction."""
    call = session.scalars(
        select(BackendCall).where(BackendCall.id == call_id).with_for_update()
    ).one()
    call.status = status_of(answer)
    call.attempts = answer.attempts
    call.http_status = answer.http_status
    call.response = _response_record(answer.body)
    call.error = answer.error
    call.finished_at = now
    call.duration_ms = round(answer.seconds * 1000)
    if call.status == SUCCEEDED and answer.body is not None:
        mirror(session, registry, answer.body.get("state"))
    metrics.observe_backend_call(call.backend, call.action, answer.outcome, answer.seconds)
    return call


def mirror(session: Session, registry: Registry, state: Any) -> None:
    """Copy the new state of the objects a backend changed into the local read model, for
    the target kinds that keep one (`TargetKind.mirror`). Malformed entries are ignored: the
    backend is the system of record, the mirror only keeps the console current."""
    if not isinstance(state, Mapping):
        return
    for target, values in state.items():
        try:
            ref = TargetRef.parse(str(target))
        except ValueError:
            continue
        kind = registry.target_kind(ref.kind)
        if kind is not None and kind.mirror is not None and isinstance(values, Mapping):
            kind.mirror(session, ref.id, values)


def audit_entry(base: AuditEntry, call: BackendCall, answer: BackendAnswer) -> AuditEntry:
    """The audit record of a remote execution, from the backend's answer."""
    outcome: dict[str, Any] = {
        "backend": call.backend,
        "backend_call_id": call.id,
        "attempts": answer.attempts,
        "http_status": answer.http_status,
    }
    if answer.outcome == "succeeded":
        body = answer.body or {}
        before, after = body.get("before"), body.get("after")
        changed = before != after
        return replace(
            base,
            before=before if changed and isinstance(before, Mapping) else None,
            after=after if changed and isinstance(after, Mapping) else None,
            outcome=outcome | {"result": body.get("result"), "replayed": answer.replayed},
        )
    error = problem_of(answer)
    result = AuditResult.UNKNOWN if answer.outcome == "unknown" else AuditResult.FAILED
    code = error.code.value
    backend_code = error.extra.get("backend_code")
    return replace(
        base,
        result=result,
        error_code=(f"{code}:{backend_code}" if backend_code else code)[:64],
        error_message=error.detail,
        outcome=outcome,
    )


def problem_of(answer: BackendAnswer) -> OpsgateError:
    error = answer.problem()
    assert error is not None, "a succeeded answer is not a problem"
    return error
