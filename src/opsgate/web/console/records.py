"""The record page: any plugin's record at `/console/records/{kind}/{id}` (and at
`/console/<collection>/{id}` when its view names a collection), shown generically or by the
plugin's own template. Personal data stays masked until the view's reveal action runs
through the gateway (a POST with a reason: permissioned and audited, never a GET); every page
view is audited as `records.read`; the activity list shows what was done to the record and
the targets related to it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.gateway import Replayed
from opsgate.core.actions.policy import Capability
from opsgate.core.actions.registry import ActionSpec, TargetRef
from opsgate.core.errors import NotFound, OpsgateError
from opsgate.core.identity.actors import Origin
from opsgate.db.models import AuditRecord
from opsgate.plugin import ReadContext, Record, RecordView
from opsgate.web.api.records import READ_ACTION, read_record
from opsgate.web.console import outcomes
from opsgate.web.console.auth import ConsoleRoute, Viewer, ViewerDep, require
from opsgate.web.console.forms import fields_for, new_idempotency_key
from opsgate.web.console.outcomes import Outcome
from opsgate.web.console.rendering import render, request_id
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.records import page_of
from opsgate.web.services import Services

router = APIRouter(route_class=ConsoleRoute)

ACTIVITY_SHOWN = 25


def _view(services: Services, kind: str) -> RecordView:
    view = services.records.view(kind)
    if view is None:
        raise HTTPException(404, f"No kind of record named {kind[:64]!r} is shown here.")
    return view


def _activity(services: Services, record: Record) -> list[AuditRecord]:
    targets = [f"{record.kind}:{record.id}", *record.related]
    with services.db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.target.in_(targets))
                .where(AuditRecord.action != READ_ACTION)
                .order_by(AuditRecord.seq.desc())
                .limit(ACTIVITY_SHOWN)
            )
        )


def _within(services: Services, viewer: Viewer, view: RecordView, ident: str) -> str | None:
    """The page showing this record as a row of another, if its view says so."""
    if view.within is None:
        return None
    with services.db.reading() as session:
        outer = view.within(ReadContext(session, viewer.actor, services.clock.now()), ident)
    if outer is None:
        raise HTTPException(404, f"No {view.kind} {ident[:64]} exists.")
    ref = TargetRef.parse(outer)
    page = services.records.page(ref.kind, ref.id)
    return f"{page}#{view.kind}-{ident}" if page else None


def _page(
    services: Services,
    viewer: Viewer,
    request: Request,
    view: RecordView,
    ident: str,
    *,
    revealed: bool = False,
    outcome: Outcome | None = None,
    origin: Origin | None = None,
) -> Response:
    """The page; with `origin`, the read is audited (as the API's record read is)."""
    require(services, viewer, Capability.RECORDS_SEARCH, request)
    if origin is not None and (home := _within(services, viewer, view, ident)) is not None:
        return RedirectResponse(home, status_code=303)
    try:
        record = read_record(services, viewer.actor, origin, view, ident, reveal_pii=revealed)
    except NotFound as exc:
        raise HTTPException(404, exc.detail) from exc
    by_kind: dict[str, list[ActionSpec]] = {}
    for spec in services.gateway.startable(viewer.actor):
        by_kind.setdefault(spec.target_kind, []).append(spec)
    forms = [
        {"spec": spec, "fields": fields_for(spec, None), "key": new_idempotency_key()}
        for spec in by_kind.get(view.kind, [])
        if spec.name != view.reveal
    ]
    has_pii = any(f.pii for f in record.fields)
    context: dict[str, Any] = {
        "record": record,
        "fields": {f.name: f for f in record.fields},
        "target": f"{record.kind}:{record.id}",
        "revealed": revealed,
        "has_pii": has_pii,
        "may_reveal": has_pii
        and view.reveal is not None
        and services.policy.may_start(viewer.actor.roles, view.reveal),
        "reveal_url": f"{services.records.page(view.kind, ident)}/reveal",
        "forms": forms,
        "actions_by_kind": by_kind,
        "activity": _activity(services, record),
        "page_of": lambda target: page_of(services.records, target),
        "outcome": outcome,
    }
    if view.context is not None:
        with services.db.reading() as session:
            ctx = ReadContext(session, viewer.actor, services.clock.now(), revealed)
            context |= dict(view.context(ctx, ident) or {})
    template = services.records.template(view.kind)
    return render(request, template, context, status=outcome.status if outcome else 200)


def _reveal(
    services: Services,
    viewer: Viewer,
    request: Request,
    origin: Origin,
    view: RecordView,
    ident: str,
    reason: str,
) -> Response:
    """Run the view's reveal action through the gateway. No idempotency key: a stored answer
    would keep the revealed data in another table."""
    if view.reveal is None:
        raise HTTPException(404, f"Nothing of a {view.kind} can be revealed.")
    body = {"target": f"{view.kind}:{ident}", "payload": {}, "reason": reason}
    try:
        result = services.gateway.submit(viewer.actor, view.reveal, body, origin)
    except OpsgateError as exc:
        outcome = outcomes.refused(exc, origin.request_id)
        return _page(services, viewer, request, view, ident, outcome=outcome)
    assert not isinstance(result, Replayed)
    if result.approval_id is not None:
        outcome = outcomes.pending(
            "Reveal personal data",
            None,
            result.approval_id,
            result.request_id,
            services.clock.now(),
        )
        return _page(services, viewer, request, view, ident, outcome=outcome)
    done = Outcome(
        kind=outcomes.OutcomeKind.EXECUTED,
        title="Personal data revealed",
        message="Shown below for this page only. The reveal is recorded in the audit trail "
        "with your reason.",
        request_id=request_id(request),
    )
    return _page(services, viewer, request, view, ident, revealed=True, outcome=done)


@router.get("/records/{kind}/{record_id}")
def record_page(
    kind: str,
    record_id: str,
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    origin: OriginDep,
) -> Response:
    return _page(services, viewer, request, _view(services, kind), record_id, origin=origin)


@router.post("/records/{kind}/{record_id}/reveal")
async def reveal(
    kind: str,
    record_id: str,
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    origin: OriginDep,
) -> Response:
    reason = str((await request.form()).get("reason") or "").strip()
    view = _view(services, kind)
    return await run_in_threadpool(
        _reveal, services, viewer, request, origin, view, record_id, reason
    )


def _collection_routes(router: APIRouter, kind: str, collection: str) -> None:
    def page(
        record_id: str,
        request: Request,
        viewer: ViewerDep,
        services: ServicesDep,
        origin: OriginDep,
    ) -> Response:
        return _page(services, viewer, request, _view(services, kind), record_id, origin=origin)

    async def reveal_here(
        record_id: str,
        request: Request,
        viewer: ViewerDep,
        services: ServicesDep,
        origin: OriginDep,
    ) -> Response:
        reason = str((await request.form()).get("reason") or "").strip()
        view = _view(services, kind)
        return await run_in_threadpool(
            _reveal, services, viewer, request, origin, view, record_id, reason
        )

    router.add_api_route(f"/{collection}/{{record_id}}", page, methods=["GET"])
    router.add_api_route(f"/{collection}/{{record_id}}/reveal", reveal_here, methods=["POST"])


def collection_router(services: Services) -> APIRouter:
    """`/<collection>/{id}` (and its reveal) for every view that names a collection."""
    routes = APIRouter(route_class=ConsoleRoute)
    for kind, view in services.records.views.items():
        if view.collection is not None:
            _collection_routes(routes, kind, view.collection)
    return routes
