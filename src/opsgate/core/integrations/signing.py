"""Signed exchanges between opsgate and its backends (HMAC-SHA256 with a shared secret).

Version 2 (docs/backends.md, "Signatures") signs a request and its answer as two different
things, so that an answer verifies only against the request it answers:

    request:   X-Opsgate-Timestamp, X-Opsgate-Nonce, X-Opsgate-Signature: v2=<hex MAC of>
               "opsgate-v2\\nrequest\\n{ts}\\n{nonce}\\n{METHOD}\\n{path}\\n{Idempotency-Key}\\n
                {X-Request-ID}\\n{sha256 hex of the body}"
    response:  X-Opsgate-Timestamp, X-Opsgate-Signature: v2=<hex MAC of>
               "opsgate-v2\\nresponse\\n{ts}\\n{the request's v2 signature}\\n{status}\\n
                {Idempotent-Replayed}\\n{sha256 hex of the body}"

The direction label keeps a reflected request from passing as an answer; the request's own
signature (which covers a fresh nonce) keeps an answer captured for one request, or one
attempt, from passing for another; the key and request ID in the request keep a captured
request from running again under another key.

Version 1 (`"{ts}\\n{METHOD}\\n{path}\\n" + body`, the same for both directions) binds
nothing. A backend may still accept it for a migration window (`verify_request(...,
accept_v1=True)`) and answer it in kind (`sign_v1`); opsgate neither sends nor believes it.

A verifier accepts several secrets at once (the current one and the one before a rotation)
and refuses a timestamp further than `tolerance` from its own clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets as _secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

TIMESTAMP_HEADER = "X-Opsgate-Timestamp"
NONCE_HEADER = "X-Opsgate-Nonce"
SIGNATURE_HEADER = "X-Opsgate-Signature"
KEY_HEADER = "Idempotency-Key"
REQUEST_ID_HEADER = "X-Request-ID"
REPLAYED_HEADER = "Idempotent-Replayed"
DEFAULT_TOLERANCE_SECONDS = 300
MIN_SECRET_LENGTH = 32
_NONCE = re.compile(r"^[0-9A-Za-z_-]{16,64}$")
_MAC = re.compile(r"^[0-9a-f]{64}$")


class SignatureVersion(StrEnum):
    V1 = "v1"  # legacy: unbound, accepted by a backend only during a migration
    V2 = "v2"


class Direction(StrEnum):
    """What a v2 signature speaks for: one side's MAC never verifies as the other's."""

    REQUEST = "request"
    RESPONSE = "response"


VERSION = SignatureVersion.V2


class SignatureError(Exception):
    """Why a signature was refused (safe to show the caller: it reveals no secret)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class SignedRequest:
    """The headers that sign one request, and its signature: the value its answer is bound to."""

    headers: dict[str, str]
    signature: str


@dataclass(frozen=True)
class VerifiedRequest:
    """A request whose signature verified: with which secret, in which version, and the
    signature its answer must be bound to (v2)."""

    version: SignatureVersion
    secret: str = field(repr=False)
    signature: str
    timestamp: int


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _line(value: str, what: str) -> str:
    # A line break inside a field would let two different exchanges share one signed string.
    if "\n" in value or "\r" in value:
        raise SignatureError(f"the {what} contains a line break")
    return value


def _hmac(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def request_string(
    timestamp: str,
    nonce: str,
    method: str,
    path: str,
    idempotency_key: str,
    request_id: str,
    body: bytes,
) -> str:
    """The exact v2 string a request's signature covers (docs/backends.md shows one)."""
    fields = [
        ("timestamp", timestamp),
        ("nonce", nonce),
        ("method", method.upper()),
        ("path", path),
        ("idempotency key", idempotency_key),
        ("request ID", request_id),
    ]
    lines = [_line(value, what) for what, value in fields]
    return "\n".join(["opsgate-v2", Direction.REQUEST, *lines, _digest(body)])


def response_string(
    timestamp: str, request_signature: str, status: int, replayed: str, body: bytes
) -> str:
    """The exact v2 string an answer's signature covers."""
    lines = [
        _line(timestamp, "timestamp"),
        _line(request_signature, "request signature"),
        str(int(status)),
        _line(replayed, "replayed marker"),
    ]
    return "\n".join(["opsgate-v2", Direction.RESPONSE, *lines, _digest(body)])


def new_nonce() -> str:
    return _secrets.token_hex(16)


def sign_request(
    secret: str,
    method: str,
    path: str,
    body: bytes,
    *,
    idempotency_key: str,
    request_id: str,
    now: float,
    nonce: str | None = None,
) -> SignedRequest:
    """Sign a request made at `now` (Unix seconds). The headers include `Idempotency-Key`
    (when not empty) and `X-Request-ID` exactly as signed; send them as they are."""
    timestamp, nonce = str(int(now)), nonce or new_nonce()
    message = request_string(timestamp, nonce, method, path, idempotency_key, request_id, body)
    mac = _hmac(secret, message)
    headers = {
        TIMESTAMP_HEADER: timestamp,
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: f"{VERSION}={mac}",
        REQUEST_ID_HEADER: request_id,
    }
    if idempotency_key:
        headers[KEY_HEADER] = idempotency_key
    return SignedRequest(headers, mac)


def sign_response(
    secret: str,
    request_signature: str,
    status: int,
    body: bytes,
    now: float,
    *,
    replayed: bool = False,
) -> dict[str, str]:
    """The headers that sign an answer to the request whose v2 signature is
    `request_signature`, with its status and body (and its Idempotent-Replayed marker)."""
    timestamp = str(int(now))
    marker = "true" if replayed else ""
    mac = _hmac(secret, response_string(timestamp, request_signature, status, marker, body))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: f"{VERSION}={mac}"}


def sign_v1(secret: str, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    """Legacy v1 headers (unbound): only for a backend answering a v1 request during a
    migration window, and for tests of that window."""
    timestamp = str(int(now))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: f"v1={_v1_mac(secret, timestamp, method, path, body)}",
    }


def _v1_mac(secret: str, timestamp: str, method: str, path: str, body: bytes) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _timestamp(headers: Mapping[str, str], now: float, tolerance: int, what: str) -> str:
    timestamp = headers.get(TIMESTAMP_HEADER)
    if not timestamp or not headers.get(SIGNATURE_HEADER):
        raise SignatureError(f"the {what} is not signed")
    if not timestamp.isdigit() or len(timestamp) > 12:
        raise SignatureError("the signature timestamp is malformed")
    if abs(now - int(timestamp)) > tolerance:
        raise SignatureError("the signature timestamp is outside the accepted window")
    return timestamp


def offered(headers: Mapping[str, str], version: SignatureVersion) -> list[str]:
    """The well-formed MACs of `version` in the signature header (there may be several)."""
    prefix = f"{version}="
    values = (v.strip() for v in headers.get(SIGNATURE_HEADER, "").split(","))
    return [v[len(prefix) :] for v in values if v.startswith(prefix) and _MAC.fullmatch(v[3:])]


def verify_request(
    secrets: Iterable[str],
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    accept_v1: bool = False,
) -> VerifiedRequest:
    """The verified request, when one of `secrets` signed it (v2; v1 too only with
    `accept_v1`) within `tolerance` seconds of `now`; raise SignatureError otherwise.
    `headers` must be case-insensitive (as HTTP headers are)."""
    timestamp = _timestamp(headers, now, tolerance, "request")
    candidates = offered(headers, SignatureVersion.V2)
    keys = list(secrets)
    if candidates:
        nonce = headers.get(NONCE_HEADER, "")
        if not _NONCE.fullmatch(nonce):
            raise SignatureError("the signature nonce is missing or malformed")
        message = request_string(
            timestamp,
            nonce,
            method,
            path,
            headers.get(KEY_HEADER, ""),
            headers.get(REQUEST_ID_HEADER, ""),
            body,
        )
        for secret in keys:
            expected = _hmac(secret, message)
            if any(hmac.compare_digest(expected, c) for c in candidates):
                return VerifiedRequest(SignatureVersion.V2, secret, expected, int(timestamp))
        raise SignatureError("the signature does not match")
    legacy = offered(headers, SignatureVersion.V1)
    if legacy and accept_v1:
        for secret in keys:
            expected = _v1_mac(secret, timestamp, method, path, body)
            if any(hmac.compare_digest(expected, c) for c in legacy):
                return VerifiedRequest(SignatureVersion.V1, secret, expected, int(timestamp))
        raise SignatureError("the signature does not match")
    if legacy:
        raise SignatureError("v1 signatures are no longer accepted; sign with v2")
    raise SignatureError("no v2 signature was offered")


def verify_response(
    secret: str,
    request_signature: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> None:
    """Return when `secret` signed this answer (v2 only) to the request whose signature is
    `request_signature`, with this status, body and replayed marker, within `tolerance` of
    `now`; raise SignatureError otherwise."""
    timestamp = _timestamp(headers, now, tolerance, "answer")
    candidates = offered(headers, SignatureVersion.V2)
    if not candidates:
        raise SignatureError("no v2 signature was offered")
    marker = headers.get(REPLAYED_HEADER, "").strip().lower()
    expected = _hmac(secret, response_string(timestamp, request_signature, status, marker, body))
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("the signature does not match this request")
