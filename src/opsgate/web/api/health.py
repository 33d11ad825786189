"""`/healthz`: liveness, with a database round trip."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import text

from opsgate.web.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz(request: Request, services: ServicesDep) -> dict[str, Any]:
    with services.db.reading() as session:
        session.execute(text("SELECT 1"))
    return {
        "status": "ok",
        "request_id": request.scope["state"]["request_id"],
        "database": services.db.dialect,
        "policy_version": services.policy.version,
    }
