"""My API tokens: the signed-in person lists, creates (secret shown once) and revokes their
own tokens. Creating one needs a recent password check, like a money-moving approval."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from opsgate.core.errors import NotFound
from opsgate.core.identity import console_sessions
from opsgate.core.identity import tokens as token_service
from opsgate.core.identity.actors import Origin
from opsgate.core.identity.console_sessions import SignInRefused
from opsgate.db.models import ApiToken, User
from opsgate.web.console.auth import ConsoleRoute, Viewer, ViewerDep
from opsgate.web.console.rendering import render
from opsgate.web.console.state import ConsoleDep, ConsoleState
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.services import Services

router = APIRouter(route_class=ConsoleRoute)

LIFETIMES_DAYS = (1, 7, 30, 90)


def _lifetimes(services: Services) -> list[int]:
    default = services.settings.token_default_ttl_days
    return sorted(set(LIFETIMES_DAYS) | {default})


def _created_by(token: ApiToken) -> str:
    if token.created_via == token_service.TokenSource.CLI:
        return f"created by CLI on host {token.created_host} by OS user {token.created_os_user}"
    if token.created_via == token_service.TokenSource.CONSOLE:
        return "created by you in the console"
    return "created before this was recorded"


def _state(token: ApiToken, services: Services) -> str:
    if token.revoked_at is not None:
        return "revoked"
    return "expired" if token.expires_at <= services.clock.now() else "active"


def _page(
    request: Request,
    services: Services,
    console: ConsoleState,
    viewer: Viewer,
    *,
    issued: token_service.IssuedToken | None = None,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> Response:
    now = services.clock.now()
    with services.db.reading() as session:
        mine = [
            {
                "token": row,
                "created_by": _created_by(row),
                "state": _state(row, services),
            }
            for row in token_service.tokens_of(session, viewer.actor.id)
        ]
    context: dict[str, Any] = {
        "tokens": mine,
        "self_service": services.settings.tokens_are_self_service,
        "lifetimes": _lifetimes(services),
        "default_days": services.settings.token_default_ttl_days,
        "reauth_needed": console_sessions.needs_reauth(
            viewer.authenticated_at, now=now, rules=console.rules
        ),
        "reauth_minutes": int(console.rules.reauth_after.total_seconds() // 60),
        "issued": issued,
        "values": values or {},
        "errors": errors or {},
        "notice": notice,
    }
    response = render(request, "tokens.html", context, status=status)
    # A page that may show a secret once is never kept by a browser or a proxy.
    response.headers["Cache-Control"] = "no-store"
    return response


REVOKED = "The token is revoked: it stops working on its next request."


@router.get("/tokens")
def my_tokens(
    request: Request, viewer: ViewerDep, services: ServicesDep, console: ConsoleDep
) -> Response:
    notice = REVOKED if request.query_params.get("revoked") else None
    return _page(request, services, console, viewer, notice=notice)


def _create(
    services: Services,
    console: ConsoleState,
    viewer: Viewer,
    origin: Origin,
    name: str,
    days: int,
    password: str,
) -> token_service.IssuedToken:
    now = services.clock.now()
    # A new credential needs a recent proof, as a money-moving approval does (a person
    # signed in through SSO only is asked to sign in again: reauthenticate says so).
    if console_sessions.needs_reauth(viewer.authenticated_at, now=now, rules=console.rules):
        console_sessions.reauthenticate(
            services.db,
            viewer.actor,
            password,
            origin=origin,
            now=now,
            rules=console.rules,
            policy_version=services.policy.version,
        )
    with services.db.writing() as session:
        user = session.get(User, viewer.actor.id)
        if user is None:  # pragma: no cover  (the session was just authenticated)
            raise NotFound("Your user no longer exists.")
        issued = token_service.create_token(
            session,
            user,
            name=name,
            ttl=timedelta(days=days),
            minter=token_service.Minter(token_service.TokenSource.CONSOLE),
            actor=viewer.actor,
            origin=origin,
            integrations=services.integrations,
            policy_version=services.policy.version,
            now=now,
        )
        session.commit()
    return issued


@router.post("/tokens")
async def create_token(
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    console: ConsoleDep,
    origin: OriginDep,
) -> Response:
    form = await request.form()
    name = str(form.get("name") or "").strip()
    raw_days = str(form.get("expires_in_days") or "")
    values = {"name": name, "expires_in_days": raw_days}
    errors: dict[str, str] = {}
    if not services.settings.tokens_are_self_service:
        errors["form"] = (
            "Self-service tokens are off on this deployment: an admin creates tokens with "
            "`opsgate tokens create`."
        )
    if not name or len(name) > token_service.NAME_LENGTH:
        errors["name"] = (
            f"Say what the token is for, in 1 to {token_service.NAME_LENGTH} characters."
        )
    if not raw_days.isdigit() or int(raw_days) not in _lifetimes(services):
        errors["expires_in_days"] = "Choose one of the lifetimes offered."
    if errors:
        return _page(request, services, console, viewer, values=values, errors=errors, status=422)
    try:
        issued = await run_in_threadpool(
            _create,
            services,
            console,
            viewer,
            origin,
            name,
            int(raw_days),
            str(form.get("password") or ""),
        )
    except SignInRefused as exc:
        return _page(
            request,
            services,
            console,
            viewer,
            values=values,
            errors={"password": exc.message},
            status=429 if exc.reason == "throttled" else 403,
        )
    return _page(request, services, console, viewer, issued=issued)


@router.post("/tokens/{token_id}/revoke")
def revoke_token(
    token_id: str, viewer: ViewerDep, services: ServicesDep, origin: OriginDep
) -> Response:
    with services.db.writing() as session:
        token_service.revoke_own_token(
            session,
            viewer.actor,
            token_id,
            origin=origin,
            policy_version=services.policy.version,
            now=services.clock.now(),
        )
        session.commit()
    return RedirectResponse("/console/tokens?revoked=1", status_code=303)
