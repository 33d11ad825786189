"""The approvals inbox and a request's detail, where reviewers approve or reject with a
comment. Decisions go through `Approvals.decide` / `cancel`; the console only decides what
to show (no approve button on one's own request) and asks for the password again before a
money-moving approval when the last sign-in is older than the re-authentication window."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.registry import RiskClass
from opsgate.core.approvals.gate import Decision, DecisionResult
from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.errors import OpsgateError
from opsgate.core.identity import console_sessions
from opsgate.core.identity.actors import Origin
from opsgate.core.identity.console_sessions import SignInRefused
from opsgate.db.models import ApprovalRequest
from opsgate.web.api.approvals import detail, summary
from opsgate.web.console import formatting, outcomes
from opsgate.web.console.auth import ConsoleRoute, Viewer, ViewerDep
from opsgate.web.console.outcomes import Outcome, OutcomeKind
from opsgate.web.console.rendering import render
from opsgate.web.console.state import ConsoleDep, ConsoleState
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.services import Services

router = APIRouter(route_class=ConsoleRoute)

STATUS_FILTERS = ("pending", "all", *(s.value for s in ApprovalStatus if s != "pending"))


@router.get("/approvals")
def inbox(
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    status: Annotated[str, Query(max_length=16)] = "pending",
) -> Response:
    chosen = status if status in STATUS_FILTERS else "pending"
    now = services.clock.now()
    with services.db.reading() as session:
        rows = services.approvals.visible(
            session, viewer.actor, status=None if chosen == "all" else chosen, limit=200
        )
        items = [summary(row, services, now) for row in rows]
    return render(
        request, "approvals.html", {"items": items, "status": chosen, "statuses": STATUS_FILTERS}
    )


def _money_moving(services: Services, action: str) -> bool:
    spec = services.registry.get(action)
    return spec is not None and spec.risk == RiskClass.MONEY_MOVING


def _diff(change: dict[str, Any]) -> list[dict[str, Any]]:
    """The proposed change as rows: field, before, after, changed; money shown as money."""
    before = change.get("before") or {}
    after = change.get("after") or {}
    currency = after.get("currency") or before.get("currency")
    rows = []
    for key in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(key), after.get(key)

        def show(value: Any, key: str = key) -> str:
            if key.endswith("_minor") and isinstance(value, int) and currency:
                return formatting.money(value, currency)
            return "—" if value is None else str(value)

        rows.append({"field": key, "before": show(old), "after": show(new), "changed": old != new})
    return rows


def _detail_page(
    request: Request,
    services: Services,
    console: ConsoleState,
    viewer: Viewer,
    origin: Origin,
    approval_id: str,
    outcome: Outcome | None = None,
) -> Response:
    approval = services.approvals.open(approval_id, viewer.actor, origin)
    data = detail(approval, viewer.actor, services)
    now = services.clock.now()
    money = _money_moving(services, approval.action)
    context = {
        "a": data,
        "diff": _diff(data["proposed_change"] or {}),
        "near_duplicates": (approval.flags or {}).get("near_duplicates", []),
        "money_moving": money,
        "reauth_needed": money
        and console_sessions.needs_reauth(viewer.authenticated_at, now=now, rules=console.rules),
        "reauth_minutes": int(console.rules.reauth_after.total_seconds() // 60),
        "signed_in_ago": formatting.duration((now - viewer.authenticated_at).total_seconds()),
        "outcome": outcome,
    }
    return render(request, "approval.html", context, status=outcome.status if outcome else 200)


@router.get("/approvals/{approval_id}")
def approval_detail(
    approval_id: str,
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    console: ConsoleDep,
    origin: OriginDep,
) -> Response:
    return _detail_page(request, services, console, viewer, origin, approval_id)


def _decide(
    services: Services,
    console: ConsoleState,
    viewer: Viewer,
    origin: Origin,
    approval_id: str,
    form: dict[str, str],
) -> Outcome:
    decision = form.get("decision", "")
    comment = form.get("comment")
    now = services.clock.now()
    with services.db.reading() as session:
        approval = session.get(ApprovalRequest, approval_id)
        action = approval.action if approval is not None else ""
    spec = services.registry.get(action)
    label = spec.label if spec is not None else action
    if (
        decision == Decision.APPROVE
        and _money_moving(services, action)
        and console_sessions.needs_reauth(viewer.authenticated_at, now=now, rules=console.rules)
    ):
        try:
            console_sessions.reauthenticate(
                services.db,
                viewer.actor,
                form.get("password", ""),
                origin=origin,
                now=now,
                rules=console.rules,
                policy_version=services.policy.version,
            )
        except SignInRefused as exc:
            return Outcome(
                kind=OutcomeKind.REFUSED,
                title="Password not confirmed",
                message=f"{exc.message} Approving a money-moving request needs your password "
                "when you signed in more than "
                f"{int(console.rules.reauth_after.total_seconds() // 60)} minutes ago. "
                "Nothing was decided.",
                request_id=origin.request_id,
                field_errors={"password": exc.message},
                status=429 if exc.reason == "throttled" else 403,
            )
    try:
        result: DecisionResult = services.approvals.decide(
            approval_id, viewer.actor, decision, comment, origin
        )
    except OpsgateError as exc:
        return outcomes.refused(exc, origin.request_id)
    with services.db.reading() as session:
        approval = session.get(ApprovalRequest, approval_id)
    return outcomes.decided(result, approval, label, services.clock.now())


@router.post("/approvals/{approval_id}/decide")
async def decide(
    approval_id: str,
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    console: ConsoleDep,
    origin: OriginDep,
) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}

    def run() -> Response:
        outcome = _decide(services, console, viewer, origin, approval_id, form)
        return _detail_page(request, services, console, viewer, origin, approval_id, outcome)

    return await run_in_threadpool(run)


@router.post("/approvals/{approval_id}/cancel")
async def cancel(
    approval_id: str,
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    console: ConsoleDep,
    origin: OriginDep,
) -> Response:
    def run() -> Response:
        try:
            result = services.approvals.cancel(approval_id, viewer.actor, origin)
            outcome = outcomes.decided(result, None, "The request", services.clock.now())
        except OpsgateError as exc:
            outcome = outcomes.refused(exc, origin.request_id)
        return _detail_page(request, services, console, viewer, origin, approval_id, outcome)

    return await run_in_threadpool(run)
