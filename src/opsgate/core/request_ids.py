"""Request IDs: always minted by opsgate. A caller's own `X-Request-ID` is never used as the
key of anything; when well formed it is kept beside ours as `client_request_id` (logs, audit
record, traces), and when malformed it is ignored (nothing of it is kept)."""

from __future__ import annotations

import re
import secrets

_WELL_FORMED = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def is_well_formed(value: str | None) -> bool:
    """True for 1-128 characters of `[A-Za-z0-9._-]`."""
    return value is not None and bool(_WELL_FORMED.fullmatch(value))


def new_request_id() -> str:
    """Return a fresh request ID (`req_` and 26 random hex characters)."""
    return "req_" + secrets.token_hex(13)


def client_request_id(value: str | None) -> str | None:
    """The caller's `X-Request-ID` to keep beside ours: `value` when well formed, else None."""
    return value if is_well_formed(value) else None
