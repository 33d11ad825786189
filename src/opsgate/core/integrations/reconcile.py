"""Reconciliation: learning what became of backend calls whose outcome is unknown.

A call is `unknown` when its answer never came (a timeout, a malformed answer) and stays
`pending` when the calling process died before settling it. `reconcile` asks the backend about
each one with the same idempotency key (`GET /v1/operations/{key}`, docs/backends.md), and
believes only an answer bound to that very lookup (core/integrations/backends.py): a "never seen"
replayed
from an earlier lookup cannot settle a call that has since run.

- the backend completed it: the call is settled as the backend says (a success mirrors the
  new state), an approval still `executing` is finished, and a `reconciled` audit record,
  linked to the original request ID, records what was learned;
- the backend never saw the key: once the signature window has passed (the backend would now
  refuse the original request), the call is settled `not_executed`; before that it is left;
- the backend still runs it, or cannot be reached: left for the next run.

A later retry that already learned the answer (same key) settles the older call without
asking. The original `unknown` audit record is never changed: the trail keeps both.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from opsgate.core import tracing
from opsgate.core.actions.gateway import Gateway
from opsgate.core.approvals.states import ApprovalStatus as S
from opsgate.core.approvals.states import check_transition
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.audit.redaction import redact, sensitive_fields
from opsgate.core.background import BackgroundLoop
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.integrations import outbox, remote
from opsgate.core.integrations.backends import DEFAULT_DEADLINE_SECONDS, LookupAnswer
from opsgate.core.integrations.signing import DEFAULT_TOLERANCE_SECONDS
from opsgate.db.models import ApprovalRequest, BackendCall

log = structlog.get_logger("opsgate.reconcile")

# After this long without being settled, a `pending` call's process is presumed dead.
DEFAULT_PENDING_AFTER = timedelta(minutes=5)
# A key the backend never saw cannot run any more once this has passed since the call: its
# last attempt was signed within the client's deadline, and the backend neither accepts nor
# commits a request signed longer ago than its tolerance (plus a minute for clock skew).
NEVER_SEEN_AFTER = timedelta(seconds=DEFAULT_DEADLINE_SECONDS + DEFAULT_TOLERANCE_SECONDS + 60)


@dataclass(frozen=True)
class Settlement:
    """What one reconciliation step found for one call."""

    call_id: str
    request_id: str
    action: str
    target: str
    was: str
    status: str
    note: str
    audit_id: str | None = None

    @property
    def settled(self) -> bool:
        return self.status != self.was

    def as_dict(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "request_id": self.request_id,
            "action": self.action,
            "target": self.target,
            "was": self.was,
            "status": self.status,
            "note": self.note,
            "audit_id": self.audit_id,
        }


def candidates(
    session: Session, now: datetime, pending_after: timedelta
) -> list[tuple[str, str | None]]:
    """The calls to reconcile (ID and trace ID), oldest first."""
    return list(
        session.execute(
            select(BackendCall.id, BackendCall.trace_id)
            .where(
                or_(
                    BackendCall.status == remote.UNKNOWN,
                    (BackendCall.status == remote.PENDING)
                    & (BackendCall.started_at <= now - pending_after),
                )
            )
            .order_by(BackendCall.started_at, BackendCall.id)
        )
    )


def reconcile(
    gateway: Gateway,
    *,
    pending_after: timedelta = DEFAULT_PENDING_AFTER,
    never_seen_after: timedelta = NEVER_SEEN_AFTER,
) -> list[Settlement]:
    """Reconcile every unknown (and abandoned pending) backend call; return what was found."""
    now = gateway.clock.now()
    with gateway.db.reading() as session:
        ids = candidates(session, now, pending_after)
    found = []
    for call_id, trace_id in ids:
        # Each question to the backend joins the trace of the request that made the call.
        trace = tracing.TraceParent(trace_id or tracing.new_trace_id(), tracing.new_span_id())
        with tracing.activated(trace):
            found.append(_reconcile_one(gateway, call_id, never_seen_after))
    return found


def _reconcile_one(gateway: Gateway, call_id: str, never_seen_after: timedelta) -> Settlement:
    with gateway.db.reading() as session:
        call = session.get(BackendCall, call_id)
        assert call is not None
        key, backend_name, started_at = call.idempotency_key, call.backend, call.started_at
        sibling = session.scalars(
            select(BackendCall)
            .where(
                BackendCall.idempotency_key == key,
                BackendCall.id != call_id,
                BackendCall.status.in_([remote.SUCCEEDED, remote.REJECTED]),
            )
            .limit(1)
        ).first()
        sibling_id = sibling.id if sibling else None
        sibling_status = sibling.status if sibling else None
    if sibling_id is not None and sibling_status is not None:
        note = f"already settled by call {sibling_id} with the same key"
        return _settle(gateway, call_id, sibling_status, None, note, {"settled_by": sibling_id})
    backend = gateway.integrations.backends.get(backend_name)
    if backend is None:
        return _unchanged(gateway, call_id, f"backend {backend_name!r} is no longer configured")
    answer = gateway.backends.lookup(backend, key)
    return _apply(gateway, call_id, answer, started_at, never_seen_after)


def _apply(
    gateway: Gateway,
    call_id: str,
    answer: LookupAnswer,
    started_at: datetime,
    never_seen_after: timedelta,
) -> Settlement:
    if answer.status == "completed":
        http_status = answer.http_status or 0
        body = answer.response if isinstance(answer.response, Mapping) else {}
        if 200 <= http_status < 300:
            return _settle(gateway, call_id, remote.SUCCEEDED, body, "the backend completed it")
        return _settle(
            gateway,
            call_id,
            remote.REJECTED,
            body,
            f"the backend refused it (HTTP {http_status})",
        )
    if answer.status == "not_found":
        if gateway.clock.now() - started_at >= never_seen_after:
            return _settle(
                gateway,
                call_id,
                remote.NOT_EXECUTED,
                None,
                "the backend never received it, and can no longer accept it",
            )
        return _unchanged(gateway, call_id, "the backend has not seen it yet; asking again later")
    if answer.status == "in_progress":
        return _unchanged(gateway, call_id, "the backend is still running it")
    return _unchanged(gateway, call_id, f"the backend could not be asked: {answer.error}")


def _unchanged(gateway: Gateway, call_id: str, note: str) -> Settlement:
    with gateway.db.reading() as session:
        call = session.get(BackendCall, call_id)
        assert call is not None
        return Settlement(
            call.id, call.request_id, call.action, call.target, call.status, call.status, note
        )


def _settle(
    gateway: Gateway,
    call_id: str,
    status: str,
    body: Mapping[str, Any] | None,
    note: str,
    extra: Mapping[str, Any] | None = None,
) -> Settlement:
    """Settle one call (row-locked; a call settled meanwhile is left as it is), finish its
    approval, and write the `reconciled` audit record, in one transaction."""
    with gateway.db.writing() as session:
        now = gateway.clock.now()
        call = session.scalars(
            select(BackendCall).where(BackendCall.id == call_id).with_for_update()
        ).one()
        was = call.status
        if was not in (remote.UNKNOWN, remote.PENDING):
            session.rollback()
            return _unchanged(gateway, call_id, "settled meanwhile")
        call.status = status
        call.reconciled_at = now
        if body is not None:
            call.response = redact(dict(body))
        if status == remote.SUCCEEDED and body is not None and extra is None:
            remote.mirror(session, gateway.registry, body.get("state"))
        origin = Origin(
            request_id=call.request_id, user_agent="opsgate-reconcile", trace_id=call.trace_id
        )
        _finish_approval(gateway, session, call, status, body, origin, now)
        request = call.request or {}
        actor_data = request.get("actor") or {}
        actor = (
            Actor(
                id=str(actor_data.get("id")),
                name=str(actor_data.get("name")),
                roles=frozenset(actor_data.get("roles") or ()),
            )
            if actor_data.get("id")
            else None
        )
        outcome: dict[str, Any] = {
            "backend": call.backend,
            "backend_call_id": call.id,
            "backend_outcome": status,
            "was": was,
        } | dict(extra or {})
        before = after = None
        if status == remote.SUCCEEDED and body is not None and extra is None:
            outcome["result"] = body.get("result")
            before, after = body.get("before"), body.get("after")
        entry = AuditEntry(
            action=call.action,
            result=AuditResult.RECONCILED,
            target=call.target,
            parameters=request.get("payload"),
            reason=request.get("reason"),
            before=before if isinstance(before, Mapping) and before != after else None,
            after=after if isinstance(after, Mapping) and before != after else None,
            outcome=outcome,
            approval_id=call.approval_id,
            execution_request_id=call.execution_request_id,
        )
        row = gateway.write_audit(session, entry, actor, origin, now)
        settlement = Settlement(
            call.id, call.request_id, call.action, call.target, was, status, note, row.id
        )
        session.commit()
    gateway.log_action(actor, entry, entry.result, settlement.audit_id or "")
    return settlement


def _finish_approval(
    gateway: Gateway,
    session: Session,
    call: BackendCall,
    status: str,
    body: Mapping[str, Any] | None,
    origin: Origin,
    now: datetime,
) -> None:
    """An approval left `executing` by an unknown call ends as the backend says, and its
    `approval.executed` event goes out then."""
    if call.approval_id is None:
        return
    approval = session.get(ApprovalRequest, call.approval_id, with_for_update=True)
    if approval is None or approval.status != S.EXECUTING.value:
        return
    approval.executed_at = now
    if status == remote.SUCCEEDED:
        approval.status = check_transition(approval.status, S.SUCCEEDED).value
        approval.result = dict((body or {}).get("result") or {})
        approval.status_detail = "settled by reconciliation"
    else:
        _fail(approval, status)
    outbox.notify_approval(
        session,
        gateway.integrations,
        outbox.EventType.EXECUTED,
        approval,
        origin=origin,
        now=now,
        sensitive=_sensitive(gateway, approval.action),
    )


def _sensitive(gateway: Gateway, action: str) -> frozenset[str]:
    spec = gateway.registry.get(action)
    return sensitive_fields(spec.payload_model) if spec else frozenset()


def _fail(approval: ApprovalRequest, status: str) -> None:
    approval.status = check_transition(approval.status, S.FAILED).value
    approval.error_code = f"reconciled:{status}"
    approval.error_message = (
        "The backend refused it." if status == remote.REJECTED else "The backend never ran it."
    )
    approval.status_detail = "settled by reconciliation"


class ReconcileLoop(BackgroundLoop):
    """`reconcile` every `interval` seconds on a daemon thread, for the web app (started and
    stopped with it) when remote backends are configured. Several processes may run it at
    once: each settlement locks its call row, and a call settled meanwhile is left alone."""

    name = "opsgate-reconcile"

    def __init__(self, gateway: Gateway, interval: float) -> None:
        self.gateway = gateway
        self.interval = interval
        super().__init__()

    def work(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                found = reconcile(self.gateway)
            except Exception as exc:  # a bad round must not end the loop
                log.error("reconcile_failed", exc_info=exc)
                continue
            settled = sum(1 for s in found if s.settled)
            if found:
                log.info("reconciled", settled=settled, still_unknown=len(found) - settled)
