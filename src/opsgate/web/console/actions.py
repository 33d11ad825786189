"""Action pages: a form rendered from the action's payload schema, submitted through the
gateway (`Gateway.submit`, the one control-layer path), and its outcome said plainly."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.gateway import ActionResult, Replayed
from opsgate.core.actions.input_checks import unsafe_character
from opsgate.core.actions.policy import Capability
from opsgate.core.actions.registry import ActionSpec, RiskClass
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import OpsgateError
from opsgate.core.identity.actors import Origin
from opsgate.db.models import ApprovalRequest
from opsgate.web.api.records import READ_ACTION
from opsgate.web.console import outcomes
from opsgate.web.console.auth import ConsoleRoute, Viewer, ViewerDep
from opsgate.web.console.forms import (
    FormField,
    Submission,
    fields_for,
    new_idempotency_key,
    read_submission,
)
from opsgate.web.console.outcomes import Outcome
from opsgate.web.console.rendering import render
from opsgate.web.console.targets import TargetSummary, summary_of
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.services import Services

log = structlog.get_logger("opsgate.console")
router = APIRouter(route_class=ConsoleRoute)


def _spec(services: Services, name: str) -> ActionSpec:
    spec = services.registry.get(name)
    if spec is None:
        raise HTTPException(404, f"There is no action named {name[:128]!r}.")
    return spec


def _target(services: Services, spec: ActionSpec, target: str) -> TargetSummary:
    summary = summary_of(services, target)
    if summary is None or summary.state is None:
        raise HTTPException(404, f"No {target[:128]} exists.")
    if summary.ref.kind != spec.target_kind:
        raise HTTPException(
            404, f"{spec.name} acts on a {spec.target_kind}, not a {summary.ref.kind}."
        )
    return summary


def may_see_target(services: Services, viewer: Viewer, spec: ActionSpec) -> bool:
    """A target's state (a balance, an amount) is shown to those who may act on it with this
    action, or who may read records anyway; no one else."""
    return services.policy.may_start(viewer.actor.roles, spec.name) or (
        services.policy.has(viewer.actor.roles, Capability.RECORDS_SEARCH)
    )


def _record_read(
    services: Services, viewer: Viewer, spec: ActionSpec, summary: TargetSummary, origin: Origin
) -> None:
    # The state shows money or (for customers) personal data: a read, recorded as the
    # customer page's is.
    services.gateway.audit_note(
        AuditEntry(
            action=READ_ACTION,
            result=AuditResult.SUCCEEDED,
            target=str(summary.ref),
            parameters={"shown_by": "action_form", "action": spec.name},
        ),
        viewer.actor,
        origin,
    )


def _page(
    request: Request,
    services: Services,
    viewer: Viewer,
    spec: ActionSpec,
    target: TargetSummary | None,
    fields: list[FormField],
    *,
    submission: Submission | None = None,
    outcome: Outcome | None = None,
) -> Response:
    show_form = (
        target is not None
        and target.state is not None
        and target.ref.kind == spec.target_kind
        and (outcome is None or outcome.is_alert)
    )
    context: dict[str, Any] = {
        "spec": spec,
        "target": target,
        "fields": fields,
        "values": submission.values if submission else {},
        "reason": submission.reason if submission else "",
        "errors": dict(outcome.field_errors) if outcome else {},
        "outcome": outcome,
        "show_form": show_form,
        "may_start": services.policy.may_start(viewer.actor.roles, spec.name),
        "allowed_roles": services.policy.allowed_roles(spec.name),
        # A fresh key for every rendered form: after a refusal, the corrected form is a new
        # request; a form submitted twice as rendered runs once.
        "idempotency_key": new_idempotency_key(),
    }
    return render(request, "action.html", context, status=outcome.status if outcome else 200)


@router.get("/actions/{name}")
def action_form(
    name: str,
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    origin: OriginDep,
    target: Annotated[str, Query(min_length=3, max_length=200)],
) -> Response:
    spec = _spec(services, name)
    if not may_see_target(services, viewer, spec):
        # Refused (audited, 403 `forbidden`) before the target is looked up: whether it
        # exists is not told either.
        services.require(viewer.actor, Capability.RECORDS_SEARCH, origin)
    summary = _target(services, spec, target)
    _record_read(services, viewer, spec, summary, origin)
    return _page(request, services, viewer, spec, summary, fields_for(spec, summary.state))


def _submit(
    services: Services, viewer: Viewer, spec: ActionSpec, submission: Submission, origin: Origin
) -> Outcome:
    key = submission.idempotency_key if spec.risk != RiskClass.READ else None
    try:
        result = services.gateway.submit(
            viewer.actor, spec.name, submission.envelope(), origin, key
        )
    except OpsgateError as exc:
        outcome = outcomes.refused(exc, origin.request_id)
        if submission.unreadable:  # say what was wrong with the amount as typed
            errors = dict(outcome.field_errors) | submission.unreadable
            return replace(outcome, field_errors=errors)
        return outcome
    except Exception:
        log.exception("console_action_crashed", action=spec.name)
        return outcomes.crashed(origin.request_id)
    now = services.clock.now()
    if isinstance(result, Replayed):
        return outcomes.replayed(spec.label, result.http_status, result.body(), now)
    return _answer(services, spec, result)


def _answer(services: Services, spec: ActionSpec, result: ActionResult) -> Outcome:
    if result.approval_id is None:
        return outcomes.executed(spec.label, result.result, result.request_id)
    with services.db.reading() as session:
        approval = session.get(ApprovalRequest, result.approval_id)
    return outcomes.pending(
        spec.label, approval, result.approval_id, result.request_id, services.clock.now()
    )


@router.post("/actions/{name}")
async def submit_action(
    name: str, request: Request, viewer: ViewerDep, services: ServicesDep, origin: OriginDep
) -> Response:
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}

    def run() -> Response:
        spec = services.registry.get(name)
        if spec is None:  # the gateway refuses it, audited
            envelope = {"target": values.get("target", ""), "payload": {}, "reason": "-"}
            services.gateway.submit(viewer.actor, name, envelope, origin)
            raise AssertionError("unreachable: an unknown action is always refused")
        target = values.get("target", "")
        summary = None
        # The gateway refuses what this viewer may not do, and unsafe text (audited); the
        # page then shows nothing of the target to a viewer who may not see it.
        if may_see_target(services, viewer, spec) and not unsafe_character(target):
            summary = summary_of(services, target)
        fields = fields_for(spec, summary.state if summary else None)
        submission = read_submission(fields, values)
        outcome = _submit(services, viewer, spec, submission, origin)
        if summary is not None and outcome.kind == outcomes.OutcomeKind.EXECUTED:
            summary = _target(services, spec, str(summary.ref))  # show the state after
        return _page(
            request, services, viewer, spec, summary, fields, submission=submission, outcome=outcome
        )

    return await run_in_threadpool(run)
