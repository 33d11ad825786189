"""`/metrics` and `/api/v1/metrics`: Prometheus exposition (roles holding `metrics.read`).

Metrics hold counts and timings per action, never customer data, and a scraper calls every few
seconds: a successful scrape is not recorded in the audit trail (a refused one is, like every
refusal).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Response

from opsgate.core import metrics
from opsgate.core.actions.policy import Capability
from opsgate.web.deps import ServicesDep, require

router = APIRouter(tags=["metrics"])


@router.get("/api/v1/metrics", dependencies=[require(Capability.METRICS_READ)])
@router.get("/metrics", dependencies=[require(Capability.METRICS_READ)], include_in_schema=False)
def scrape(services: ServicesDep, accept: Annotated[str | None, Header()] = None) -> Response:
    """Every opsgate metric, summed over all processes sharing `PROMETHEUS_MULTIPROC_DIR`.
    OpenMetrics when the `Accept` header asks for it, else the Prometheus text format."""
    body, content_type = metrics.scrape(services.db, services.registry.names(), accept)
    return Response(content=body, headers={"Content-Type": content_type})
