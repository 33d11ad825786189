"""Approval metrics: volumes and time to decision per action, as charts and a table."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from opsgate.core.actions.policy import Capability
from opsgate.core.approvals import metrics as approval_metrics
from opsgate.web.console.auth import ConsoleRoute, ViewerDep, require
from opsgate.web.console.charts import grouped_bars
from opsgate.web.console.formatting import duration
from opsgate.web.console.rendering import render
from opsgate.web.deps import ServicesDep

router = APIRouter(route_class=ConsoleRoute)

VOLUMES = (("requested", "Requested"), ("approved", "Approved"), ("rejected", "Rejected"),
           ("pending", "Pending"))  # fmt: skip
WAITS = (("median", "Median"), ("p90", "90th percentile"))
PERIODS = (1, 7, 30, 90)


@router.get("/metrics")
def metrics(
    request: Request,
    viewer: ViewerDep,
    services: ServicesDep,
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> Response:
    require(services, viewer, Capability.AUDIT_READ, request)
    until = services.clock.now()
    since = until - timedelta(days=days)
    with services.db.reading() as session:
        report = approval_metrics.report(session, since=since, until=until)
    names = [entry["action"] for entry in report]
    volumes = grouped_bars(
        names,
        VOLUMES,
        {e["action"]: {k: float(e[k]) for k, _ in VOLUMES} for e in report},
        fmt=lambda v: f"{v:g}",
    )
    waits = grouped_bars(
        names,
        WAITS,
        {e["action"]: dict(e["time_to_decision_seconds"]) for e in report},
        fmt=duration,
    )
    return render(
        request,
        "metrics.html",
        {
            "report": report,
            "volumes": volumes,
            "waits": waits,
            "days": days,
            "periods": PERIODS,
            "since": since,
            "until": until,
        },
    )
