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
    home,
    metrics,
    oidc,
    records,
    sign_in,
    tokens,
)
from opsgate.web.console.auth import csrf_protect
from opsgate.web.console.state import STATIC, ConsoleState
from opsgate.web.services import Services


def install(app: FastAPI, settings: Settings, services: Services) -> None:
    """Mount the console at `/console` (and redirect `/` to it), with the plugins' record
    pages and templates. Every console route checks CSRF on unsafe methods: the dependency is
    attached here, once, to all of them."""
    templates = {
        item.plugin.name: item.plugin.templates
        for item in services.plugins
        if item.plugin.templates is not None
    }
    app.state.console = ConsoleState.build(settings, templates)
    oidc.install(app, settings)
    modules = (sign_in, oidc, home, records, actions, approvals, audit, metrics, tokens)
    routers = [module.router for module in modules]
    routers.append(records.collection_router(services))
    for router in routers:
        app.include_router(
            router,
            prefix="/console",
            dependencies=[Depends(csrf_protect)],
            include_in_schema=False,
        )
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/console", status_code=307)
