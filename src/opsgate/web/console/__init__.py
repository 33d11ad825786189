"""The operator console: server-rendered pages (Jinja2, no build step) at `/console`.

Every action a page offers goes through the same control layer as the JSON API
(`Gateway.submit`, `Approvals.decide`); the console only decides what to show. See
docs/console.md.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from opsgate.settings import Settings
from opsgate.web.console import (
    actions,
    approvals,
    audit,
    customers,
    home,
    metrics,
    oidc,
    sign_in,
    tokens,
)
from opsgate.web.console.auth import csrf_protect
from opsgate.web.console.state import STATIC, ConsoleState


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the console at `/console` (and redirect `/` to it). Every console route checks
    CSRF on unsafe methods: the dependency is attached here, once, to all of them."""
    app.state.console = ConsoleState.build(settings)
    oidc.install(app, settings)
    for module in (sign_in, oidc, home, customers, actions, approvals, audit, metrics, tokens):
        app.include_router(
            module.router,
            prefix="/console",
            dependencies=[Depends(csrf_protect)],
            include_in_schema=False,
        )
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console", status_code=307)
