"""`/audit`: search the audit trail (roles holding `audit.read`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from opsgate.core import audit_search
from opsgate.core.clock import as_utc
from opsgate.core.policy import Capability
from opsgate.web.deps import ServicesDep, require

router = APIRouter(tags=["audit"])


@router.get("/audit", dependencies=[require(Capability.AUDIT_READ)])
def search_audit(
    request: Request,
    services: ServicesDep,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=128)] = None,
    target: Annotated[str | None, Query(max_length=200)] = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    approval_id: Annotated[str | None, Query(max_length=40)] = None,
    result: Annotated[str | None, Query(max_length=32)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=audit_search.MAX_LIMIT)] = 50,
) -> dict[str, Any]:
    """Audit records matching every filter given, newest first; follow `next_cursor`."""
    where = audit_search.AuditFilter(
        actor=actor,
        action=action,
        target=target,
        request_id=request_id,
        approval_id=approval_id,
        result=result,
        since=as_utc(since),
        until=as_utc(until),
    )
    with services.db.reading() as session:
        page = audit_search.search(session, where, cursor=cursor, limit=limit)
        items = [audit_search.as_dict(row) for row in page.items]
    return {
        "request_id": request.scope["state"]["request_id"],
        "items": items,
        "next_cursor": page.next_cursor,
    }
