"""Prefixed, time-sortable, unguessable identifiers (`cus_01J…`).

26 Crockford base32 characters: 48 bits of milliseconds then 80 random bits (the ULID layout).
The time part only orders IDs; nothing reads business time from an ID.
"""

from __future__ import annotations

import re
import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_RE = re.compile(r"^[a-z]{2,5}_[0-9A-HJKMNP-TV-Z]{26}$")


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """Return a new identifier `prefix_<ulid>`; unique with overwhelming probability."""
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(millis, 10)}{_encode(secrets.randbits(80), 16)}"


def looks_like_id(value: str) -> bool:
    """True when `value` has the shape of an opsgate identifier."""
    return bool(_ID_RE.fullmatch(value))
