"""Who is acting: an authenticated person, with the roles they hold right now."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    """An authenticated actor. `credential_id` names the token or session that proved it."""

    id: str
    name: str
    roles: frozenset[str]
    credential_id: str | None = None


@dataclass(frozen=True)
class Origin:
    """Where a call came from, for the audit record."""

    request_id: str
    ip: str | None = None
    user_agent: str | None = None
    # The W3C trace ID (32 lowercase hex) the request belongs to.
    trace_id: str | None = None
    # The caller's own X-Request-ID, kept beside opsgate's `request_id` (never a key).
    client_request_id: str | None = None
