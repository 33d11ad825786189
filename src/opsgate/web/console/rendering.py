"""Rendering console pages: every page gets the viewer, the request ID and a CSRF token."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from opsgate.web.console.state import ConsoleState
from opsgate.web.security import PRESESSION_COOKIE, cookie_secure


def request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
) -> HTMLResponse:
    """Render `template`. The CSRF token is bound to this browser's session or, before
    sign-in, to a pre-session cookie set here when the browser has none."""
    console: ConsoleState = request.app.state.console
    new_nonce = None
    binding = console.signing.csrf_binding(request)
    if binding is None:
        new_nonce = secrets.token_urlsafe(24)
        binding = f"p:{new_nonce}"
    state = request.scope["state"]
    page = {
        "request_id": request_id(request),
        "viewer": state.get("viewer"),
        "csrf_token": console.signing.csrf_token(binding),
        "path": request.url.path,
        "now": request.app.state.services.clock.now(),
    } | (context or {})
    html = console.templates.get_template(template).render(page)
    response = HTMLResponse(html, status_code=status)
    if new_nonce is not None:
        response.set_cookie(
            PRESESSION_COOKIE,
            new_nonce,
            httponly=True,
            secure=cookie_secure(request, console.cookie_secure),
            samesite="lax",
            path="/console",
        )
    return response


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "message": message}, status=status)
