"""The customer page: profile (personal data masked until an audited reveal), accounts,
payments with their reversals, notes, activity, and the actions the viewer may start."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.gateway import Replayed
from opsgate.core.actions.policy import Capability
from opsgate.core.actions.registry import TargetRef
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import OpsgateError
from opsgate.core.identity.actors import Origin
from opsgate.web.console import outcomes
from opsgate.web.console.auth import ConsoleRoute, Viewer, ViewerDep, require
from opsgate.web.console.customer_reads import READ_ACTION, customer_of, customer_view
from opsgate.web.console.forms import fields_for, new_idempotency_key
from opsgate.web.console.outcomes import Outcome
from opsgate.web.console.rendering import render, request_id
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.services import Services

router = APIRouter(route_class=ConsoleRoute)

VIEW_PII = "customer.view_pii"


def _page(
    services: Services,
    viewer: Viewer,
    request: Request,
    customer_id: str,
    *,
    revealed: dict[str, Any] | None = None,
    outcome: Outcome | None = None,
    origin: Origin | None = None,
) -> Response:
    """The page; with `origin`, the read is recorded (as the API's customer read is)."""
    require(services, viewer, Capability.RECORDS_SEARCH, request)
    with services.db.reading() as session:
        view = customer_view(session, customer_id)
    if view is None:
        raise HTTPException(404, f"No customer {customer_id[:64]} exists.")
    if origin is not None:
        services.gateway.audit_note(
            AuditEntry(
                action=READ_ACTION, result=AuditResult.SUCCEEDED, target=f"customer:{customer_id}"
            ),
            viewer.actor,
            origin,
        )
    startable = services.gateway.startable(viewer.actor)
    by_kind: dict[str, list[Any]] = {}
    for spec in startable:
        by_kind.setdefault(spec.target_kind, []).append(spec)
    forms = [
        {"spec": spec, "fields": fields_for(spec, None), "key": new_idempotency_key()}
        for spec in by_kind.get("customer", [])
        if spec.name != VIEW_PII
    ]
    context = {
        "view": view,
        "customer": view.customer,
        "revealed": revealed,
        "may_reveal": services.policy.may_start(viewer.actor.roles, VIEW_PII),
        "forms": forms,
        "account_actions": by_kind.get("account", []),
        "payment_actions": by_kind.get("payment", []),
        "outcome": outcome,
    }
    return render(request, "customer.html", context, status=outcome.status if outcome else 200)


@router.get("/customers/{customer_id}")
def customer_page(
    customer_id: str, request: Request, viewer: ViewerDep, services: ServicesDep, origin: OriginDep
) -> Response:
    return _page(services, viewer, request, customer_id, origin=origin)


@router.post("/customers/{customer_id}/reveal")
async def reveal(
    customer_id: str,
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    origin: OriginDep,
) -> Response:
    """Reveal personal data through the gateway: permissioned and audited like any action.
    No idempotency key: a stored answer would keep the revealed data in another table."""
    form = await request.form()
    reason = str(form.get("reason") or "").strip()

    def run() -> Response:
        body = {"target": f"customer:{customer_id}", "payload": {}, "reason": reason}
        try:
            result = services.gateway.submit(viewer.actor, VIEW_PII, body, origin)
        except OpsgateError as exc:
            outcome = outcomes.refused(exc, origin.request_id)
            return _page(services, viewer, request, customer_id, outcome=outcome)
        assert not isinstance(result, Replayed)
        if result.approval_id is not None:
            outcome = outcomes.pending(
                "Reveal personal data",
                None,
                result.approval_id,
                result.request_id,
                services.clock.now(),
            )
            return _page(services, viewer, request, customer_id, outcome=outcome)
        return _page(
            services,
            viewer,
            request,
            customer_id,
            revealed=dict(result.result or {}),
            outcome=Outcome(
                kind=outcomes.OutcomeKind.EXECUTED,
                title="Personal data revealed",
                message="Shown below for this page only. The reveal is recorded in the audit "
                "trail with your reason.",
                request_id=request_id(request),
            ),
        )

    return await run_in_threadpool(run)


def _to_customer(services: Services, ref: TargetRef) -> Response:
    with services.db.reading() as session:
        customer = customer_of(session, ref)
    if customer is None:
        raise HTTPException(404, f"No {ref.kind} {ref.id[:64]} exists.")
    return RedirectResponse(f"/console/customers/{customer}#{ref.kind}-{ref.id}", status_code=303)


@router.get("/accounts/{account_id}")
def account_page(
    account_id: str, request: Request, viewer: ViewerDep, services: ServicesDep
) -> Response:
    require(services, viewer, Capability.RECORDS_SEARCH, request)
    return _to_customer(services, TargetRef("account", account_id))


@router.get("/payments/{payment_id}")
def payment_page(
    payment_id: str, request: Request, viewer: ViewerDep, services: ServicesDep
) -> Response:
    require(services, viewer, Capability.RECORDS_SEARCH, request)
    return _to_customer(services, TargetRef("payment", payment_id))
