"""Who is using the console: the session cookie, the signed-in viewer, CSRF on every unsafe
request, and how console routes answer errors (as pages, never as JSON)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsgate.core.actions.policy import Capability
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import AuthenticationRateLimited, Forbidden, OpsgateError
from opsgate.core.identity import console_sessions
from opsgate.core.identity.actors import Actor
from opsgate.core.identity.console_sessions import IssuedSession, SessionRefused, SignInMethod
from opsgate.db.models import User
from opsgate.web.console.rendering import error_page
from opsgate.web.console.state import ConsoleDep, ConsoleState
from opsgate.web.deps import OriginDep, ServicesDep, origin_of, refusals_of
from opsgate.web.security import (
    CSRF_FIELD,
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    cookie_secure,
    same_origin,
)
from opsgate.web.services import Services

log = structlog.get_logger("opsgate.console")

COOKIE_PATH = "/console"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class Viewer:
    """The signed-in person looking at a page, and what the navigation may offer them."""

    actor: Actor
    session_id: str
    method: str
    authenticated_at: datetime
    may_search: bool
    may_read_audit: bool
    may_approve: bool


class SignInRequired(Exception):
    """No usable session: the browser is sent to the sign-in page. `reason` is a message code
    (see `sign_in.MESSAGES`), never data."""

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(reason or "sign-in required")
        self.reason = reason


class CsrfRefused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def current_viewer(
    request: Request, services: ServicesDep, console: ConsoleDep, origin: OriginDep
) -> Viewer:
    """The signed-in viewer, or SignInRequired. An ended, timed-out or forged session is
    audited (`auth.session`, denied)."""
    raw = request.cookies.get(SESSION_COOKIE)
    parsed = console.signing.read_session_cookie(raw)
    now = services.clock.now()
    refusal: SessionRefused | None = None
    if parsed is None:
        if raw is None:
            raise SignInRequired()
        refusal = SessionRefused("forged", "The session cookie is not one opsgate signed.")
    else:
        try:
            with services.db.reading() as session:
                auth = console_sessions.authenticate(
                    session, parsed[0], parsed[1], now=now, rules=console.rules
                )
        except SessionRefused as exc:
            refusal = exc
    if refusal is not None and refusal.actor is None:
        # A cookie that names no session: anyone can send these, so they are counted per
        # source and minute like bad tokens (core/identity/auth_refusals.py), not audited one by
        # one.
        entry = AuditEntry(
            action=console_sessions.AuthAction.SESSION,
            result=AuditResult.DENIED,
            error_code=refusal.reason,
            error_message=refusal.message,
            parameters={"path": request.url.path[:200]},
        )
        if refusals_of(services).refuse(entry, origin):
            raise AuthenticationRateLimited(
                "Too many refused sign-ins from this address; wait a minute and sign in again."
            )
        raise SignInRequired(refusal.reason)
    if refusal is not None:
        console_sessions.refuse(
            services.db,
            refusal,
            origin=origin,
            now=now,
            policy_version=services.policy.version,
            path=request.url.path,
        )
        raise SignInRequired(refusal.reason)
    if auth.needs_touch:
        with services.db.writing() as session:
            console_sessions.touch(session, auth.session_id, now=now)
            session.commit()
    roles = auth.actor.roles
    viewer = Viewer(
        actor=auth.actor,
        session_id=auth.session_id,
        method=auth.method,
        authenticated_at=auth.authenticated_at,
        may_search=services.policy.has(roles, Capability.RECORDS_SEARCH),
        may_read_audit=services.policy.has(roles, Capability.AUDIT_READ),
        may_approve=any(services.policy.may_approve(roles, n) for n in services.registry.names()),
    )
    request.scope["state"]["actor_id"] = auth.actor.id
    request.scope["state"]["viewer"] = viewer
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


async def csrf_protect(request: Request, console: ConsoleDep) -> None:
    """Every unsafe console request must come from our own pages: same origin (when the
    browser says) and a CSRF token bound to this browser's session."""
    if request.method in SAFE_METHODS:
        return
    if not same_origin(request):
        raise CsrfRefused("cross_site")
    form = await request.form()
    token = form.get(CSRF_FIELD)
    binding = console.signing.csrf_binding(request)
    if not isinstance(token, str) or not console.signing.csrf_valid(token, binding):
        raise CsrfRefused("csrf_token")


def require(services: Services, viewer: Viewer, capability: Capability, request: Request) -> None:
    """Refuse (audited, as the API does) unless the viewer holds `capability`."""
    services.require(viewer.actor, capability, origin_of(request))


# --- sessions begin here ---------------------------------------------------------------


def set_session_cookie(
    response: Response, request: Request, console: ConsoleState, issued: IssuedSession
) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        console.signing.session_cookie(issued.id, issued.secret),
        httponly=True,
        secure=cookie_secure(request, console.cookie_secure),
        samesite="lax",
        path=COOKIE_PATH,
    )
    response.delete_cookie(PRESESSION_COOKIE, path=COOKIE_PATH)


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def begin_session(
    request: Request,
    response: Response,
    services: Services,
    console: ConsoleState,
    user: User,
    method: SignInMethod,
) -> IssuedSession:
    """Start a console session for `user`, who has just proved who they are by `method`, and
    set its cookie on `response`. The one entry point for sign-in callbacks (single sign-on
    calls this with `SignInMethod.OIDC`; the password form goes through
    `console_sessions.sign_in_with_password`, which calls the same `start_session`)."""
    with services.db.writing() as session:
        issued = console_sessions.start_session(
            session,
            user,
            method=method,
            origin=origin_of(request),
            now=services.clock.now(),
            rules=console.rules,
            policy_version=services.policy.version,
        )
        session.commit()
    set_session_cookie(response, request, console, issued)
    return issued


# --- how console routes answer ----------------------------------------------------------


def _sign_in_redirect(request: Request, reason: str | None) -> Response:
    params = {}
    if request.method == "GET" and request.url.path != "/console/login":
        params["next"] = request.url.path
    if reason:
        params["m"] = reason
    location = "/console/login" + ("?" + urlencode(params) if params else "")
    response = RedirectResponse(location, status_code=303)
    clear_session_cookie(response)
    return response


CSRF_MESSAGES = {
    "cross_site": "This request came from another site, so it was not accepted.",
    "csrf_token": (
        "This form's security token is missing or belongs to another session (for example, "
        "after you signed in again). Nothing was done: reload the page and submit again."
    ),
}


def _audit_csrf(request: Request, reason: str) -> None:
    services: Services = request.app.state.services
    services.gateway.audit_refusal(
        Forbidden(CSRF_MESSAGES[reason]),
        AuditEntry(
            action="auth.csrf",
            result=AuditResult.DENIED,
            error_code=reason,
            parameters={"method": request.method, "path": request.url.path[:200]},
        ),
        None,
        origin_of(request),
    )


class ConsoleRoute(APIRoute):
    """Console routes answer every refusal and error as a page that says what happened, in
    plain words, with the request ID."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as exc:
                return _sign_in_redirect(request, exc.reason)
            except CsrfRefused as exc:
                _audit_csrf(request, exc.reason)
                return error_page(request, 403, "Not accepted", CSRF_MESSAGES[exc.reason])
            except OpsgateError as exc:
                return error_page(request, exc.status, exc.title, exc.detail)
            except RequestValidationError as exc:
                fields = ", ".join(str(e["loc"][-1]) for e in exc.errors())
                return error_page(
                    request, 422, "Not understood", f"These values are not valid: {fields}."
                )
            except StarletteHTTPException as exc:
                title = "Not found" if exc.status_code == 404 else "Not available"
                return error_page(request, exc.status_code, title, str(exc.detail))
            except Exception:
                log.exception("console_error", path=request.url.path)
                return error_page(
                    request,
                    500,
                    "Server error",
                    "The server failed while answering this page; it is logged with the request "
                    "ID below. Nothing you submitted is half-done: actions commit whole or not "
                    "at all. Quote the request ID to engineering.",
                )

        return console_handler
