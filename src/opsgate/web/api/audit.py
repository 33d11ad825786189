"""`/audit`: search and verify the audit trail (roles holding `audit.read`). Reading the
audit trail is itself recorded in it (PCI DSS 10.2.1.3)."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from opsgate.core.actions.policy import Capability
from opsgate.core.audit import chain as audit_chain
from opsgate.core.audit import search as audit_search
from opsgate.core.audit.anchoring import Anchoring, verify_anchored
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.clock import as_utc
from opsgate.core.errors import InvalidPayload
from opsgate.core.identity.actors import Actor, Origin
from opsgate.web.api.filters import FilterDate
from opsgate.web.deps import OriginDep, ServicesDep, require
from opsgate.web.services import Services

router = APIRouter(tags=["audit"])

AuditReader = Annotated[Actor, require(Capability.AUDIT_READ)]


def record_read(
    services: Services, actor: Actor, origin: Origin, action: str, params: dict[str, Any]
) -> None:
    with services.db.writing() as session:
        services.gateway.write_audit(
            session,
            AuditEntry(action=action, result=AuditResult.SUCCEEDED, parameters=params),
            actor,
            origin,
            services.clock.now(),
        )
        session.commit()


@router.get("/audit")
def search_audit(
    request: Request,
    services: ServicesDep,
    reader: AuditReader,
    origin: OriginDep,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=128)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    approval_id: Annotated[str | None, Query(max_length=40)] = None,
    result: Annotated[str | None, Query(max_length=32)] = None,
    since: FilterDate = None,
    until: FilterDate = None,
    q: Annotated[str | None, Query(max_length=200, description="Text in the reason")] = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=audit_search.MAX_LIMIT)] = 50,
) -> dict[str, Any]:
    """Audit records matching every filter given, newest first; follow `next_cursor`.
    `request_id` matches a record's original request ID or its execution request ID."""
    where = audit_search.AuditFilter(
        actor=actor,
        action=action,
        target=target,
        request_id=request_id,
        approval_id=approval_id,
        result=result,
        since=as_utc(since),
        until=as_utc(until),
        text=q,
    )
    with services.db.reading() as session:
        page = audit_search.search(session, where, cursor=cursor, limit=limit)
        items = [audit_search.as_dict(row) for row in page.items]
    record_read(
        services, reader, origin, "audit.read", where.as_params() | {"returned": len(items)}
    )
    return {
        "request_id": request.scope["state"]["request_id"],
        "items": items,
        "next_cursor": page.next_cursor,
    }


@router.get("/audit/verify")
def verify_audit(
    request: Request,
    services: ServicesDep,
    reader: AuditReader,
    origin: OriginDep,
    against: Annotated[
        str | None, Query(description="A checkpoint SEQ:HASH kept elsewhere")
    ] = None,
) -> dict[str, Any]:
    """Walk the hash chain, which must extend the latest signed anchor (and `against`): `ok`,
    how many entries, the first bad record if any, the anchor, and findings (anchoring that
    stopped)."""
    checkpoint = None
    if against:
        try:
            checkpoint = audit_chain.Checkpoint.parse(against)
        except ValueError as exc:
            raise InvalidPayload(str(exc), errors=[{"loc": ["query", "against"]}]) from exc
    with services.db.reading() as session:
        result = verify_anchored(
            session,
            Anchoring.from_settings(services.settings),
            services.clock.now(),
            against=checkpoint,
        )
        head = audit_chain.checkpoint(session)
    # A record planted beyond the head refuses every append, this one too: the answer is the
    # finding itself.
    with contextlib.suppress(audit_chain.RecordBeyondHead):
        record_read(
            services, reader, origin, "audit.verify", {"ok": result.ok, "entries": result.entries}
        )
    return {"request_id": request.scope["state"]["request_id"], "head": str(head)} | (
        result.as_dict()
    )
