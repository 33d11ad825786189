"""The home page (search, my requests, approvals waiting for me) and search results.

Search is a POST: what was typed (an email, a phone number, a name) never appears in a URL,
a server log or the browser's history.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.policy import Capability
from opsgate.core.approvals.states import ApprovalStatus
from opsgate.db.models import ApprovalRequest, AuditRecord
from opsgate.web.api.approvals import summary
from opsgate.web.api.search import Found, audited_search
from opsgate.web.console.auth import ConsoleRoute, Viewer, ViewerDep, require
from opsgate.web.console.rendering import render
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.services import Services

router = APIRouter(route_class=ConsoleRoute)

SEARCH_LIMIT = 50
MAX_QUERY = 200


def waiting_for(services: Services, viewer: Viewer, limit: int = 50) -> list[dict[str, Any]]:
    """Pending requests this viewer may decide: an approver role, not theirs, not yet
    decided by them. (Approvals.decide still checks all of it.)"""
    actor = viewer.actor
    now = services.clock.now()
    with services.db.reading() as session:
        rows = services.approvals.visible(
            session, actor, status=ApprovalStatus.PENDING.value, limit=limit
        )
        return [
            summary(row, services, now)
            for row in rows
            if row.requester_id != actor.id
            and row.target != f"user:{actor.id}"
            and services.policy.may_approve(actor.roles, row.action)
            and all(d.approver_id != actor.id for d in row.decisions)
            and row.expires_at > now
        ]


def _home(services: Services, viewer: Viewer) -> dict[str, Any]:
    actor = viewer.actor
    now = services.clock.now()
    with services.db.reading() as session:
        mine = [
            summary(row, services, now)
            for row in session.scalars(
                select(ApprovalRequest)
                .where(ApprovalRequest.requester_id == actor.id)
                .order_by(ApprovalRequest.created_at.desc(), ApprovalRequest.id.desc())
                .limit(10)
            )
        ]
        recent = list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.actor_id == actor.id)
                # What they did, not what they read or how they signed in.
                .where(AuditRecord.action.in_(services.registry.names()))
                .order_by(AuditRecord.seq.desc())
                .limit(10)
            )
        )
    waiting = waiting_for(services, viewer) if viewer.may_approve else []
    return {"mine": mine, "recent": recent, "waiting": waiting}


@router.get("")
def home(request: Request, viewer: ViewerDep, services: ServicesDep) -> Response:
    return render(request, "home.html", _home(services, viewer) | search_box(services, ""))


def search_box(services: Services, query: str) -> dict[str, Any]:
    """What the search box shows: what it finds (from the enabled plugins) and the query."""
    box = {"label": services.records.search_label(), "hints": services.records.hints}
    return {"query": query, "search": box}


@router.post("/search")
async def search(
    request: Request, viewer: ViewerDep, services: ServicesDep, origin: OriginDep
) -> Response:
    form = await request.form()
    query = str(form.get("q") or "").strip()[:MAX_QUERY]

    def run() -> Found:
        require(services, viewer, Capability.RECORDS_SEARCH, request)
        # Limited, masked and audited as the API's search is (one function for both).
        return audited_search(services, viewer.actor, origin, query, limit=SEARCH_LIMIT)

    found = await run_in_threadpool(run)
    groups: dict[str, list[Any]] = {}
    for hit in found.hits:
        groups.setdefault(services.records.collection(hit.kind), []).append(hit)
    context = search_box(services, query) | {"groups": groups, "total": found.total}
    return render(request, "search.html", context | {"record_page": services.records.page})
