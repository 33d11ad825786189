"""`/auth/step-up`: a bearer token's holder proves who they are again (their password) and
gets a short-lived step-up grant for one money-moving approval (core/approvals/step_up.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from opsgate.core.approvals import step_up
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import LimitExceeded, Unauthenticated
from opsgate.core.identity import console_sessions
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.identity.console_sessions import SessionRules, SignInRefused
from opsgate.web.console.state import ConsoleState
from opsgate.web.deps import CurrentActor, OriginDep, ServicesDep
from opsgate.web.services import Services

router = APIRouter(tags=["auth"])

STEP_UP_ACTION = "auth.step_up"


class StepUpBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, max_length=1024)


def _rules(request: Request) -> SessionRules:
    # The console's rules: the same re-authentication window and the same login throttle.
    console: ConsoleState = request.app.state.console
    return console.rules


def _step_up(
    services: Services, rules: SessionRules, actor: Actor, password: str, origin: Origin
) -> dict[str, Any]:
    now = services.clock.now()
    try:
        # Throttled, timed and audited (`auth.reauth`) exactly like the console's check.
        console_sessions.reauthenticate(
            services.db,
            actor,
            password,
            origin=origin,
            now=now,
            rules=rules,
            policy_version=services.policy.version,
        )
    except SignInRefused as exc:
        if exc.reason == "throttled":
            raise LimitExceeded(exc.message) from exc
        raise Unauthenticated(exc.message) from exc
    ttl = timedelta(seconds=services.settings.step_up_seconds)
    with services.db.writing() as session:
        issued = step_up.issue(session, actor, now=now, ttl=ttl)
        row = services.gateway.write_audit(
            session,
            AuditEntry(
                action=STEP_UP_ACTION,
                result=AuditResult.SUCCEEDED,
                target=f"user:{actor.id}",
                outcome={
                    "grant_id": issued.id,
                    "purpose": step_up.Purpose.MONEY_APPROVAL.value,
                    "expires_at": issued.expires_at.isoformat(),
                },
            ),
            actor,
            origin,
            now,
        )
        session.commit()
    return {
        "step_up": issued.secret,
        "grant_id": issued.id,
        "purpose": step_up.Purpose.MONEY_APPROVAL.value,
        "expires_at": issued.expires_at.isoformat(),
        "header": step_up.STEP_UP_HEADER,
        "request_id": origin.request_id,
        "audit_id": row.id,
    }


@router.post("/auth/step-up", status_code=201)
async def create_step_up(
    body: StepUpBody,
    request: Request,
    actor: CurrentActor,
    services: ServicesDep,
    origin: OriginDep,
) -> dict[str, Any]:
    """Check the caller's password again and issue a step-up grant: bound to the caller and
    this bearer token, valid `OPSGATE_STEP_UP_SECONDS` (300), for one money-moving approval.
    Send it as `X-Step-Up` on `POST /approvals/{id}/approve`. Shown once; stored hashed.
    A wrong password is 401 `unauthenticated`, too many 429 `limit_exceeded` (both audited
    as `auth.reauth`, denied, and counted by the login throttle)."""
    return await run_in_threadpool(
        _step_up, services, _rules(request), actor, body.password, origin
    )
