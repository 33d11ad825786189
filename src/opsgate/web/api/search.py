"""`/search` and `/customers/{id}`: find records the way operators look them up. Both return
personal data, masked as the console masks it, and both are recorded in the audit trail.

A search (API or console, `audited_search`) is counted against the searcher's window limit
(core/identity/probing.py) and audited with a keyed hash of its term, the term's kind and length,
never the term: the trail is kept for 400 days and read by many, and a full email or phone
number typed into the box is personal data.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, replace
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.policy import Capability, ControlMode
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.audit.redaction import keyed_hash
from opsgate.core.errors import LimitExceeded, NotFound
from opsgate.core.identity import probing
from opsgate.core.identity.actors import Actor, Origin
from opsgate.settings import Settings
from opsgate.web.deps import OriginDep, ServicesDep, require
from opsgate.web.security import secret_keys
from opsgate.web.services import Services
from opsgate_demo import search as records

router = APIRouter(tags=["search"])

Searcher = Annotated[Actor, require(Capability.RECORDS_SEARCH)]

_TERM_KEY_LABEL = b"opsgate.audit.search_term"


@lru_cache(maxsize=4)
def _derived_key(secret: str) -> bytes:
    return hmac.new(secret.encode("utf-8"), _TERM_KEY_LABEL, hashlib.sha256).digest()


def term_key(settings: Settings) -> bytes:
    """The key of search-term hashes: `audit_hash_key`, else derived from the secret key."""
    if settings.audit_hash_key is not None:
        return settings.audit_hash_key.get_secret_value().encode("utf-8")
    return _derived_key(secret_keys(settings)[-1])


def term_record(settings: Settings, term: records.SearchTerm | None) -> dict[str, Any] | None:
    """What the audit trail keeps of a search term: its kind, length and keyed hash."""
    if term is None:
        return None
    return {
        "kind": term.kind.value,
        "length": len(term.text),
        "hmac_sha256": keyed_hash(term_key(settings), term.text),
    }


def probing_rule(settings: Settings) -> probing.ProbingRule:
    return probing.ProbingRule(
        mode=ControlMode(settings.search_limit_mode),
        max_searches=settings.search_limit_count,
        window=timedelta(minutes=settings.search_limit_window_minutes),
        flag_misses=settings.search_flag_misses,
    )


def audited_search(
    services: Services, actor: Actor, origin: Origin, query: str, *, limit: int
) -> records.SearchResults:
    """Search for `actor`, counted against their window limit and audited (with a keyed hash
    of the term) in one transaction; raise LimitExceeded (audited) past an enforced limit."""
    rule = probing_rule(services.settings)
    asked = {"term": term_record(services.settings, records.classify(query))}
    entry = AuditEntry(action="records.search", result=AuditResult.SUCCEEDED, parameters=asked)
    with services.db.writing() as session:
        now = services.clock.now()
        counted = rule.mode != ControlMode.OFF
        used = probing.usage(session, rule, actor.id, now) if counted else None
        if used is not None and probing.refuses(rule, used):
            session.rollback()
            services.gateway.refuse(
                LimitExceeded(
                    f"You have searched {used.searches} times in the last {_window(rule)}; "
                    "wait for the window to pass.",
                    extra={"limit": rule.describe() | {"searches": used.searches}},
                ),
                replace(
                    entry,
                    result=AuditResult.LIMITED,
                    flags=probing.flags(rule, used, over_limit=True),
                ),
                actor,
                origin,
            )
        found = records.search(session, query, limit=limit)
        counts = {kind: len(items) for kind, items in asdict(found).items()}
        entry = replace(entry, parameters=asked | {"found": counts})
        if used is not None:
            over = used.searches >= rule.max_searches
            used = probing.record(
                session, actor.id, origin.request_id, used, missed=not found.total, now=now
            )
            entry = replace(entry, flags=probing.flags(rule, used, over_limit=over))
        row = services.gateway.write_audit(session, entry, actor, origin, now)
        session.commit()
        audit_id = row.id
    services.gateway.log_action(actor, entry, entry.result, audit_id)
    return found


def _window(rule: probing.ProbingRule) -> str:
    minutes = int(rule.window.total_seconds() // 60)
    return f"{minutes} minute{'' if minutes == 1 else 's'}"


@router.get("/search")
async def search(
    request: Request,
    services: ServicesDep,
    actor: Searcher,
    origin: OriginDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Customers by email (the whole address), phone (the whole number, or its last four
    digits), name or ID, personal data masked; accounts and payments by ID."""
    found = await run_in_threadpool(audited_search, services, actor, origin, q, limit=limit)
    return {"request_id": request.scope["state"]["request_id"], "query": q, **asdict(found)}


@router.get("/customers/{customer_id}")
async def customer(
    customer_id: str, request: Request, services: ServicesDep, actor: Searcher, origin: OriginDep
) -> dict[str, Any]:
    """A customer (name, email and phone masked as on the console's page; in full only
    through the audited customer.view_pii action) with their accounts, latest payments and
    notes."""

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
