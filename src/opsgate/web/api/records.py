"""`/records/{kind}/{id}` (and `/<collection>/{id}` for a view that names one, e.g. the demo's
`/customers/{id}`): any plugin's record, shown generically. Personal data comes masked (the
full values only through the view's reveal action, `POST /records/{kind}/{id}/reveal`,
run through the gateway); every read is audited as `records.read`, as the console's page is.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.gateway import Replayed
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import NotFound
from opsgate.core.identity.actors import Actor, Origin
from opsgate.plugin import ReadContext, Record, RecordView
from opsgate.web.api.search import Searcher
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.records import record_answer
from opsgate.web.services import Services

router = APIRouter(tags=["records"])

READ_ACTION = "records.read"


def view_of(services: Services, kind: str) -> RecordView:
    """The view of `kind`; NotFound (a 404 problem) when no plugin shows that kind."""
    view = services.records.view(kind)
    if view is None:
        raise NotFound(f"No kind of record named {kind[:64]!r} is shown here.")
    return view


def read_record(
    services: Services,
    actor: Actor,
    origin: Origin | None,
    view: RecordView,
    ident: str,
    *,
    reveal_pii: bool = False,
    parameters: dict[str, Any] | None = None,
) -> Record:
    """Read one record through its view; raise NotFound when there is none. With `origin`,
    the read is audited as `records.read` (a page re-shown after a reveal is not: the
    reveal action is its record)."""
    with services.db.reading() as session:
        ctx = ReadContext(session, actor, services.clock.now(), reveal_pii)
        record = view.read(ctx, ident)
    if record is None:
        raise NotFound(f"No {view.kind} {ident[:64]} exists.")
    if origin is not None:
        services.gateway.audit_note(
            AuditEntry(
                action=READ_ACTION,
                result=AuditResult.SUCCEEDED,
                target=f"{view.kind}:{ident}",
                parameters=parameters,
            ),
            actor,
            origin,
        )
    return record


async def _answer(
    request: Request, services: Services, actor: Actor, origin: Origin, kind: str, ident: str
) -> dict[str, Any]:
    def run() -> Record:
        return read_record(services, actor, origin, view_of(services, kind), ident)

    record = await run_in_threadpool(run)
    return {"request_id": request.scope["state"]["request_id"]} | record_answer(
        record, services.records
    )


@router.get("/records/{kind}/{record_id}")
async def record(
    kind: str,
    record_id: str,
    request: Request,
    services: ServicesDep,
    actor: Searcher,
    origin: OriginDep,
) -> dict[str, Any]:
    """A record of any kind a plugin shows: labelled fields (`pii` ones masked: in full only
    through the view's audited reveal action), related targets, tables."""
    return await _answer(request, services, actor, origin, kind, record_id)


@router.post(
    "/records/{kind}/{record_id}/reveal",
    responses={
        200: {"description": "The record with its `pii` fields in full (`revealed: true`)"},
        202: {"description": "The reveal waits for approval: `{status, approval_id}`"},
    },
)
async def reveal(
    kind: str,
    record_id: str,
    request: Request,
    services: ServicesDep,
    actor: Searcher,
    origin: OriginDep,
) -> JSONResponse:
    """Body `{"reason": "…"}`. Runs the view's reveal action through the gateway (its
    permission, the reason, the audit record) and answers the record with its personal data in
    full, for this answer only: nothing of it is stored."""
    raw = await request.body()

    def run() -> JSONResponse:
        view = view_of(services, kind)
        if view.reveal is None:
            raise NotFound(f"Nothing of a {kind[:64]} can be revealed.")
        try:
            asked = json.loads(raw or b"{}")
        except ValueError:
            asked = {}
        reason = asked.get("reason") if isinstance(asked, dict) else None
        envelope: dict[str, Any] = {
            "target": f"{kind}:{record_id}",
            "payload": {},
            "reason": reason,
        }
        result = services.gateway.submit(actor, view.reveal, envelope, origin)
        assert not isinstance(result, Replayed)  # no idempotency key: nothing is kept
        if result.approval_id is not None:
            held = {"status": "pending_approval", "approval_id": result.approval_id}
            return JSONResponse({"request_id": origin.request_id} | held, status_code=202)
        record = read_record(services, actor, None, view, record_id, reveal_pii=True)
        answer = record_answer(record, services.records) | {"revealed": True}
        return JSONResponse({"request_id": origin.request_id} | answer)

    return await run_in_threadpool(run)


def _collection_route(kind: str) -> Any:
    async def by_collection(
        record_id: str, request: Request, services: ServicesDep, actor: Searcher, origin: OriginDep
    ) -> dict[str, Any]:
        return await _answer(request, services, actor, origin, kind, record_id)

    return by_collection


def install(app: FastAPI, services: Services) -> None:
    """Mount `/api/v1/<collection>/{id}` for every view that names a collection."""
    for kind, view in services.records.views.items():
        if view.collection is not None:
            app.add_api_route(
                f"/api/v1/{view.collection}/{{record_id}}",
                _collection_route(kind),
                methods=["GET"],
                tags=["records"],
                summary=f"A {kind}, as /records/{kind}/{{record_id}} shows it",
                name=f"record_{kind}",
            )
