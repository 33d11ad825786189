"""`/search` and `/customers/{id}`: find records the way operators look them up. Both return
personal data, so both are recorded in the audit trail."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from opsgate.core.actors import Actor
from opsgate.core.audit import AuditEntry, AuditResult
from opsgate.core.errors import NotFound
from opsgate.core.policy import Capability
from opsgate.domain import search as records
from opsgate.web.deps import OriginDep, ServicesDep, require

router = APIRouter(tags=["search"])

Searcher = Annotated[Actor, require(Capability.RECORDS_SEARCH)]


@router.get("/search")
async def search(
    request: Request,
    services: ServicesDep,
    actor: Searcher,
    origin: OriginDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Customers by email, phone, name or ID; accounts and payments by ID."""

    def run() -> records.SearchResults:
        with services.db.reading() as session:
            found = records.search(session, q, limit=limit)
        counts = {kind: len(items) for kind, items in asdict(found).items()}
        services.gateway.audit_note(
            AuditEntry(
                action="records.search",
                result=AuditResult.SUCCEEDED,
                parameters={"q": q, "found": counts},
            ),
            actor,
            origin,
        )
        return found

    found = await run_in_threadpool(run)
    return {"request_id": request.scope["state"]["request_id"], "query": q, **asdict(found)}


@router.get("/customers/{customer_id}")
async def customer(
    customer_id: str, request: Request, services: ServicesDep, actor: Searcher, origin: OriginDep
) -> dict[str, Any]:
    """A customer (phone masked; full PII only through the audited customer.view_pii action)
    with their accounts, latest payments and notes."""

    def run() -> dict[str, Any]:
        with services.db.reading() as session:
            overview = records.customer_overview(session, customer_id)
        if overview is None:
            raise NotFound(f"No customer {customer_id[:64]}.")
        services.gateway.audit_note(
            AuditEntry(
                action="records.read",
                result=AuditResult.SUCCEEDED,
                target=f"customer:{customer_id}",
            ),
            actor,
            origin,
        )
        return overview

    overview = await run_in_threadpool(run)
    return {"request_id": request.scope["state"]["request_id"]} | overview
