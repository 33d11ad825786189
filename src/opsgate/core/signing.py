"""Signed requests between opsgate and its backends (HMAC-SHA256 with a shared secret).

The signature covers the timestamp, the method, the path (with its query) and the body:

    X-Opsgate-Timestamp: 1764424800
    X-Opsgate-Signature: v1=<hex HMAC-SHA256(secret, "{timestamp}\\n{METHOD}\\n{path}\\n" + body)>

A verifier accepts several secrets at once (the current one and the one before a rotation)
and refuses a timestamp further than `tolerance` from its own clock, so a captured request
cannot be replayed later. Rotation: give the verifier the new secret next to the old one,
switch the signer to the new one, then drop the old one from the verifier.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TIMESTAMP_HEADER = "X-Opsgate-Timestamp"
SIGNATURE_HEADER = "X-Opsgate-Signature"
VERSION = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
MIN_SECRET_LENGTH = 32


def _mac(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    """The headers that sign a request (or a response) made at `now` (Unix seconds)."""
    timestamp = str(int(now))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"{VERSION}={_mac(secret, timestamp, method, path, body)}",
    }


@dataclass(frozen=True)
class SignatureError(Exception):
    """Why a signature was refused (safe to show the caller: it reveals no secret)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


def verify(
    secrets: Iterable[str],
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Return when one of `secrets` signed this request within `tolerance` seconds of `now`;
    raise SignatureError otherwise. `headers` must be case-insensitive (as HTTP headers are)."""
    timestamp = headers.get(TIMESTAMP_HEADER)
    signature = headers.get(SIGNATURE_HEADER)
    if not timestamp or not signature:
        raise SignatureError("the request is not signed")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureError("the signature timestamp is malformed")
    if abs(now - int(timestamp)) > tolerance:
        raise SignatureError("the signature timestamp is outside the accepted window")
    offered = [
        value.strip()[len(VERSION) + 1 :]
        for value in signature.split(",")
        if value.strip().startswith(f"{VERSION}=")
    ]
    if not offered:
        raise SignatureError(f"no {VERSION} signature was offered")
    for secret in secrets:
        expected = _mac(secret, timestamp, method, path, body)
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise SignatureError("the signature does not match")
