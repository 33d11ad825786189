"""`/search`: find customers, accounts and payments the way operators look them up."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from opsgate.core.policy import Capability
from opsgate.domain import search as records
from opsgate.web.deps import ServicesDep, require

router = APIRouter(tags=["search"])


@router.get("/search", dependencies=[require(Capability.RECORDS_SEARCH)])
def search(
    request: Request,
    services: ServicesDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Customers by email, phone, name or ID; accounts and payments by ID."""
    with services.db.reading() as session:
        found = records.search(session, q, limit=limit)
    return {"request_id": request.scope["state"]["request_id"], "query": q, **asdict(found)}
