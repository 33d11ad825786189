"""`/search`: find records the way operators look them up, through every enabled plugin's
search providers. Answers carry personal data masked, and every search is audited.

A search (API or console, `audited_search`) is counted against the searcher's window limit
(core/identity/probing.py) and audited with a keyed hash of its term, the term's kind and length,
never the term: the trail is kept for 400 days and read by many, and a full email or phone
number typed into the box is personal data.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.policy import Capability, ControlMode
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.audit.redaction import keyed_hash
from opsgate.core.errors import LimitExceeded
from opsgate.core.identity import probing
from opsgate.core.identity.actors import Actor, Origin
from opsgate.plugin import ReadContext, SearchHit, SearchResults
from opsgate.settings import Settings
from opsgate.web.deps import OriginDep, ServicesDep, require
from opsgate.web.security import secret_keys
from opsgate.web.services import Services

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


def term_record(settings: Settings, kind: str | None, text: str) -> dict[str, Any] | None:
    """What the audit trail keeps of a search term: its kind, length and keyed hash."""
    if not text:
        return None
    return {
        "kind": kind,
        "length": len(text),
        "hmac_sha256": keyed_hash(term_key(settings), text),
    }


def coarse_kind(query: str) -> str:
    """What a query looks like, for a search refused before any provider saw it (providers
    say the kind of the searches they run: SearchResults.term_kind)."""
    digits = sum(char.isdigit() for char in query)
    if "@" in query:
        return "email"
    if digits == len(query.replace(" ", "")) and digits == 4:
        return "last4"
    if digits >= 7 and all(char.isdigit() or char in " ()+.-" for char in query):
        return "phone"
    if "_" in query and " " not in query:
        return "id"
    return "name"


@dataclass(frozen=True)
class Found:
    """Every provider's hits, and the counts per collection the audit record keeps."""

    hits: tuple[SearchHit, ...]
    counts: dict[str, int]
    term_kind: str | None
    term: str

    @property
    def total(self) -> int:
        return len(self.hits)


def run_providers(services: Services, ctx: ReadContext, query: str, limit: int) -> Found:
    """Ask every enabled plugin's provider; a hit of a kind a provider did not name is
    dropped (a provider answers for its own kinds only)."""
    kinds = services.records.searched_kinds()
    counts = {services.records.collection(kind): 0 for kind in kinds}
    hits: list[SearchHit] = []
    # The term as the first provider that found something took it, else as the first that
    # said: one kind and one keyed hash per search.
    chosen: SearchResults | None = None
    for provider in services.records.providers:
        results = provider.search(ctx, query, limit)
        if results.term_kind is not None and (chosen is None or (results.hits and not chosen.hits)):
            chosen = results
        for hit in results.hits[:limit]:
            if hit.kind in provider.kinds:
                hits.append(hit)
                counts[services.records.collection(hit.kind)] += 1
    term_kind = chosen.term_kind if chosen else None
    term = (chosen.term or query) if chosen else query
    return Found(tuple(hits), counts, term_kind, term)


def probing_rule(settings: Settings) -> probing.ProbingRule:
    return probing.ProbingRule(
        mode=ControlMode(settings.search_limit_mode),
        max_searches=settings.search_limit_count,
        window=timedelta(minutes=settings.search_limit_window_minutes),
        flag_misses=settings.search_flag_misses,
    )


def audited_search(
    services: Services, actor: Actor, origin: Origin, query: str, *, limit: int
) -> Found:
    """Search for `actor` through every provider, counted against their window limit and
    audited (with a keyed hash of the term) in one transaction; raise LimitExceeded (audited)
    past an enforced limit."""
    rule = probing_rule(services.settings)
    query = query.strip()
    asked = {"term": term_record(services.settings, coarse_kind(query), query)}
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
        ctx = ReadContext(session=session, actor=actor, now=now)
        found = run_providers(services, ctx, query, limit) if query else Found((), {}, None, "")
        if found.term_kind is not None:
            asked = {"term": term_record(services.settings, found.term_kind, found.term)}
        entry = replace(entry, parameters=asked | {"found": found.counts})
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


def hit_answer(hit: SearchHit, services: Services) -> dict[str, Any]:
    return {
        "kind": hit.kind,
        "id": hit.id,
        "target": hit.target,
        "label": hit.label,
        "page": services.records.page(hit.kind, hit.id),
        "fields": dict(hit.fields),
    }


@router.get("/search")
async def search(
    request: Request,
    services: ServicesDep,
    actor: Searcher,
    origin: OriginDep,
    q: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    """Every enabled plugin's search (the demo: customers by email, phone, last four digits,
    name or ID; accounts and payments by ID), personal data masked. `hits` lists every
    record found; each collection (`customers`, …) also lists its hits' fields."""
    found = await run_in_threadpool(audited_search, services, actor, origin, q, limit=limit)
    grouped: dict[str, list[dict[str, Any]]] = {name: [] for name in found.counts}
    for hit in found.hits:
        grouped[services.records.collection(hit.kind)].append(dict(hit.fields))
    return {
        "request_id": request.scope["state"]["request_id"],
        "query": q,
        "total": found.total,
        "hits": [hit_answer(hit, services) for hit in found.hits],
        **grouped,
    }
