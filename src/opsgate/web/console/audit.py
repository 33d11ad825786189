"""The audit log: filters, cursor pages and CSV export, for roles holding `audit.read`.
Reading and exporting are recorded in the trail itself, as the API does.

Filters travel in the URL because they are IDs, codes and dates only; free text is not offered
here (it could carry customer data into URLs and logs).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import IO, Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from opsgate.core.actions.policy import Capability
from opsgate.core.audit import files as audit_files
from opsgate.core.audit import search as audit_search
from opsgate.core.audit.records import AuditResult
from opsgate.core.errors import InvalidPayload
from opsgate.core.identity.console_sessions import AuthAction
from opsgate.db.models import User
from opsgate.web.api.audit import record_read
from opsgate.web.api.filters import EARLIEST, LATEST
from opsgate.web.console.auth import ConsoleRoute, ViewerDep, require
from opsgate.web.console.rendering import render
from opsgate.web.deps import OriginDep, ServicesDep

router = APIRouter(route_class=ConsoleRoute)

PAGE_SIZE = 50
Text = Annotated[str | None, Query(max_length=200)]


def _day(value: str | None, *, end: bool) -> datetime | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidPayload(f"{value[:20]!r} is not a date (YYYY-MM-DD).") from exc
    start = datetime.combine(day, time(), tzinfo=UTC)
    # "The whole day" of 9999-12-31 would overflow; and no record is dated outside these years.
    if not EARLIEST <= start < LATEST:
        raise InvalidPayload(
            f"{value[:20]!r} is outside {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d}, "
            "the dates records can have."
        )
    return start + timedelta(days=1) if end else start


def _filter(
    actor: str | None,
    action: str | None,
    target: str | None,
    request_id: str | None,
    result: str | None,
    since: str | None,
    until: str | None,
) -> audit_search.AuditFilter:
    return audit_search.AuditFilter(
        actor=actor or None,
        action=(action or "").strip() or None,
        target=(target or "").strip() or None,
        request_id=(request_id or "").strip() or None,
        result=result or None,
        since=_day(since, end=False),
        until=_day(until, end=True),  # the whole day given
    )


@router.get("/audit")
def audit_log(
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    origin: OriginDep,
    actor: Text = None,
    action: Text = None,
    target: Text = None,
    request_id: Text = None,
    result: Text = None,
    since: Text = None,
    until: Text = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = PAGE_SIZE,
) -> Response:
    require(services, viewer, Capability.AUDIT_READ, request)
    where = _filter(actor, action, target, request_id, result, since, until)
    with services.db.reading() as session:
        page = audit_search.search(session, where, cursor=cursor, limit=limit)
        users = list(
            session.execute(select(User.id, User.display_name).order_by(User.display_name))
        )
    record_read(
        services,
        viewer.actor,
        origin,
        "audit.read",
        where.as_params() | {"returned": len(page.items)},
    )
    filters = {
        "actor": actor or "",
        "action": action or "",
        "target": target or "",
        "request_id": request_id or "",
        "result": result or "",
        "since": since or "",
        "until": until or "",
    }
    active = {k: v for k, v in filters.items() if v}
    if limit != PAGE_SIZE:
        active["limit"] = str(limit)
    context: dict[str, Any] = {
        "page": page,
        "filters": filters,
        "active": active,
        "users": users,
        "results": [r.value for r in AuditResult],
        "actions": [*services.registry.names(), *(a.value for a in AuthAction), "audit.read"],
    }
    return render(request, "audit.html", context)


@router.get("/audit/export.csv")
def audit_export(
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    origin: OriginDep,
    actor: Text = None,
    action: Text = None,
    target: Text = None,
    request_id: Text = None,
    result: Text = None,
    since: Text = None,
    until: Text = None,
) -> Response:
    """Every matching record, oldest first, as CSV. Written to a spooled temporary file
    (memory up to 8 MB, then disk) and streamed from there."""
    require(services, viewer, Capability.AUDIT_READ, request)
    where = _filter(actor, action, target, request_id, result, since, until)
    spool: IO[str] = tempfile.SpooledTemporaryFile(  # noqa: SIM115  (closed by the stream)
        max_size=8 * 1024 * 1024, mode="w+", encoding="utf-8", newline=""
    )
    with services.db.reading() as session:
        written = audit_files.export(session, where, spool, fmt="csv")
    record_read(
        services, viewer.actor, origin, "audit.export", where.as_params() | {"records": written}
    )
    spool.seek(0)

    def stream() -> Iterator[str]:
        try:
            while chunk := spool.read(64 * 1024):
                yield chunk
        finally:
            spool.close()

    stamp = services.clock.now().strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        stream(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="opsgate-audit-{stamp}.csv"'},
    )
