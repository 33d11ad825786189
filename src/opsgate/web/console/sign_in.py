"""Signing in with a username and password, and signing out."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from opsgate.core.identity import console_sessions
from opsgate.core.identity.console_sessions import IssuedSession, SessionRefused, SignInRefused
from opsgate.web.console import oidc
from opsgate.web.console.auth import (
    ConsoleRoute,
    ViewerDep,
    clear_session_cookie,
    set_session_cookie,
)
from opsgate.web.console.rendering import render
from opsgate.web.console.state import ConsoleDep
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.security import SESSION_COOKIE

router = APIRouter(route_class=ConsoleRoute)

# `?m=` carries one of these codes, never text or data.
MESSAGES = {
    "signed_out": "You are signed out.",
    "idle_timeout": "You were inactive for a while, so you were signed out. Sign in again.",
    "absolute_timeout": "Your session reached its maximum length. Sign in again.",
    "ended": "Your session has ended. Sign in again.",
    "unknown": "Your session has ended. Sign in again.",
    "forged": "Your session has ended. Sign in again.",
    "inactive": "Your account is deactivated; ask an admin.",
}
_SAFE_NEXT = re.compile(r"^/console(/[A-Za-z0-9_.:/-]*)?$")


def safe_next(value: str | None) -> str:
    """Only a console path of our own: never another site, never `//host`."""
    if value and _SAFE_NEXT.fullmatch(value) and "//" not in value and ".." not in value:
        return value
    return "/console"


@router.get("/login")
def login_form(
    request: Request,
    services: ServicesDep,
    console: ConsoleDep,
    next_path: Annotated[str | None, Query(alias="next", max_length=300)] = None,
    m: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    parsed = console.signing.read_session_cookie(request.cookies.get(SESSION_COOKIE))
    if parsed is not None:
        try:
            with services.db.reading() as session:
                console_sessions.authenticate(
                    session, *parsed, now=services.clock.now(), rules=console.rules
                )
            return RedirectResponse(safe_next(next_path), status_code=303)
        except SessionRefused:
            pass
    return render(
        request,
        "login.html",
        {
            "next": safe_next(next_path),
            "notice": MESSAGES.get(m or ""),
            "error": None,
            "sso": oidc.enabled(request),
        },
    )


@router.post("/login")
async def login(
    request: Request, services: ServicesDep, console: ConsoleDep, origin: OriginDep
) -> Response:
    form = await request.form()
    username = str(form.get("username") or "")
    password = str(form.get("password") or "")
    next_path = safe_next(str(form.get("next") or ""))
    held = console.signing.read_session_cookie(request.cookies.get(SESSION_COOKIE))

    def sign_in() -> IssuedSession:
        return console_sessions.sign_in_with_password(
            services.db,
            username,
            password,
            origin=origin,
            now=services.clock.now(),
            rules=console.rules,
            policy_version=services.policy.version,
            replaces=held[0] if held else None,
        )

    try:
        issued = await run_in_threadpool(sign_in)
    except SignInRefused as exc:
        return render(
            request,
            "login.html",
            {
                "next": next_path,
                "notice": None,
                "error": exc.message,
                "username": username,
                "sso": oidc.enabled(request),
            },
            status=429 if exc.reason == "throttled" else 401,
        )
    redirect = RedirectResponse(next_path, status_code=303)
    set_session_cookie(redirect, request, console, issued)
    return redirect


@router.post("/logout")
def logout(
    request: Request, viewer: ViewerDep, services: ServicesDep, origin: OriginDep
) -> Response:
    console_sessions.sign_out(
        services.db,
        viewer.actor,
        origin=origin,
        now=services.clock.now(),
        policy_version=services.policy.version,
    )
    response = RedirectResponse("/console/login?m=signed_out", status_code=303)
    clear_session_cookie(response)
    return response
