"""Request IDs: honour a well-formed one from the caller, otherwise mint one."""

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


def accept_or_new(value: str | None) -> str:
    """Return `value` when it is well formed, else a fresh request ID."""
    return value if value is not None and is_well_formed(value) else new_request_id()
