"""The ASGI application factory (`uvicorn --factory opsgate.web.app:create_app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from opsgate import __version__
from opsgate.logging import configure_logging
from opsgate.settings import Settings, get_settings
from opsgate.web import bench, console, problems
from opsgate.web.api import actions, approvals, audit, controls, health, search
from opsgate.web.middleware import RequestContextMiddleware
from opsgate.web.services import Services


def create_app(
    settings: Settings | None = None,
    services: Services | None = None,
    *,
    configure_logs: bool = True,
) -> FastAPI:
    """Build the app. Fails at once (PolicyError) when the policy does not validate."""
    settings = settings or get_settings()
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format)
    services = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services.record_startup()
        yield
        services.db.dispose()

    app = FastAPI(
        title="opsgate",
        version=__version__,
        summary="The internal control layer for fintech operations.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    problems.install(app)
    for module in (actions, approvals, audit, controls, search, health):
        app.include_router(module.router, prefix="/api/v1")
    if settings.bench_endpoints:
        app.include_router(bench.router)
    console.install(app, settings)
    app.add_middleware(RequestContextMiddleware)
    return app
