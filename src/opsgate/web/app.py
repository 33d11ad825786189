"""The ASGI application factory (`uvicorn --factory opsgate.web.app:create_app`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from opsgate import __version__
from opsgate.core.audit.anchoring import Anchoring, start_anchoring
from opsgate.core.identity.auth_refusals import RefusalFlushLoop
from opsgate.core.integrations.reconcile import ReconcileLoop
from opsgate.core.integrations.webhooks import start_delivery
from opsgate.core.metrics import mark_process_dead
from opsgate.logging import configure_logging
from opsgate.settings import Settings, get_settings, refuse_unsafe_production
from opsgate.web import console, docs, problems
from opsgate.web.api import (
    actions,
    approvals,
    audit,
    controls,
    health,
    metrics,
    records,
    search,
    step_up,
)
from opsgate.web.bounded_input import BoundedInputMiddleware
from opsgate.web.deps import refusals_of
from opsgate.web.middleware import RequestContextMiddleware
from opsgate.web.security import SecurityHeadersMiddleware
from opsgate.web.services import Services
from opsgate.web.tracing import setup as setup_tracing


def create_app(
    settings: Settings | None = None,
    services: Services | None = None,
    *,
    configure_logs: bool = True,
) -> FastAPI:
    """Build the app. Fails at once (PolicyError) when the policy does not validate, and
    (ProductionRefused) in production without the settings it needs."""
    settings = settings or get_settings()
    refuse_unsafe_production(settings)
    if configure_logs:
        configure_logging(settings.log_level, settings.log_format)
    services = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        services.record_startup()
        # Several processes may deliver at once: claims are safe (core/integrations/webhooks.py).
        delivery = (
            start_delivery(services.db, services.integrations, services.clock, settings.public_url)
            if settings.webhook_delivery
            else None
        )
        # Unknown backend outcomes are settled without waiting for a cron job (and safely from
        # several processes: core/integrations/reconcile.py).
        reconciling = None
        if services.integrations.backends and settings.reconcile_interval_seconds:
            reconciling = ReconcileLoop(services.gateway, settings.reconcile_interval_seconds)
            reconciling.start()
        refusals = RefusalFlushLoop(refusals_of(services))  # core/identity/auth_refusals.py
        refusals.start()
        # The chain head is signed and kept outside the database (core/audit/anchoring.py).
        anchoring = start_anchoring(
            services.db, Anchoring.from_settings(settings), services.integrations, services.clock
        )
        yield
        if anchoring is not None:
            anchoring.stop()
        refusals.stop()
        if reconciling is not None:
            reconciling.stop()
        if delivery is not None:
            delivery.stop()
        services.gateway.backends.close()
        services.db.dispose()
        mark_process_dead()  # its live gauges leave PROMETHEUS_MULTIPROC_DIR

    app = FastAPI(
        title="opsgate",
        version=__version__,
        summary="The internal control layer for fintech operations.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served from our own origin (web/docs.py)
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.services = services
    problems.install(app)
    for module in (actions, approvals, audit, controls, search, records, health, step_up):
        app.include_router(module.router, prefix="/api/v1")
    records.install(app, services)  # `/api/v1/<collection>/{id}` of the plugins' views
    app.include_router(metrics.router)  # `/metrics` for scrapers, and under /api/v1
    if settings.bench_endpoints:  # uncontrolled twins of plugin actions, for `make bench` only
        for item in services.plugins:
            if item.plugin.bench_router is not None:
                app.include_router(item.plugin.bench_router)
    console.install(app, settings, services)
    docs.install(app)
    # Outermost last: request context (ID, logs), then security headers on every response,
    # then the body bounded and checked before any route, or its authentication, runs.
    app.add_middleware(BoundedInputMiddleware, services=services)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(RequestContextMiddleware)
    # OpenTelemetry only when the OTEL_ variables ask for it (web/tracing.py).
    app.state.tracing = setup_tracing(app, services.db.engine)
    return app
