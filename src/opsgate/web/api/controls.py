"""`/controls/report`: what monitor-mode controls would have done (roles with audit.read)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request

from opsgate.core.actions.policy import Capability
from opsgate.core.audit import controls_report
from opsgate.core.clock import as_utc
from opsgate.web.api.filters import FilterDate
from opsgate.web.deps import ServicesDep, require

router = APIRouter(tags=["controls"])


@router.get("/controls/report", dependencies=[require(Capability.AUDIT_READ)])
def report(
    request: Request,
    services: ServicesDep,
    since: FilterDate = None,
    until: FilterDate = None,
) -> dict[str, Any]:
    """For each control in monitor mode: how often it would have fired, by action and actor."""
    until = as_utc(until) or services.clock.now()
    since = as_utc(since) or until - timedelta(days=30)
    with services.db.reading() as session:
        body = controls_report.report(session, services.policy, since=since, until=until)
    return {
        "request_id": request.scope["state"]["request_id"],
        "since": since.isoformat(),
        "until": until.isoformat(),
    } | body
