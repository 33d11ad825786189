"""Targets a team's service owns and opsgate keeps no copy of (docs/backends.md, "Remote
targets"): read, searched and shown over the same signed exchanges as actions.

    GET {backend url}/v1/targets/{kind}/{id}        200 {"state": {..., "version": <int>}}
                                                    404 (signed): no such record

Each read is signed v2 with an empty Idempotency-Key and the request ID of the operator's
request; its answer must be signed bound to that very read (a reflected request, an answer
captured for another read, an unsigned one are not believed). One attempt, bounded by the
backend's connect and read timeouts. Any answer that is not a verified 200 or 404 in the shape
above is `TargetUnavailable` (503 `target_unavailable`): opsgate does nothing on a guess.

These reads happen before any write transaction opens: the gateway and controlled execution
fetch the record, then hand it in (`TargetKind.remote`). Search and record views of remote
kinds are in opsgate/remote_records.py.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from opsgate.core.actions.registry import TargetKind
from opsgate.core.errors import TargetUnavailable
from opsgate.core.integrations import signing
from opsgate.core.integrations.backends import (
    BackendClient,
    UnreadableAnswer,
    exchange,
    json_object,
)
from opsgate.core.integrations.config import Backend, Integrations
from opsgate.core.tracing import outgoing_traceparent

log = structlog.get_logger("opsgate.remote_targets")

# Approval requests keep the version in an integer column.
MAX_VERSION = 2**31 - 1


class ReadFailed(Exception):
    """A read got no answer it can believe (its text says why; it holds no secret)."""


@dataclass(frozen=True)
class RemoteRecord:
    """A record as its service reported it, for one request: what `snapshot` returns."""

    kind: str
    id: str
    state: Mapping[str, Any] = field(hash=False)

    @property
    def version(self) -> int:
        return int(self.state["version"])


def snapshot(obj: Any) -> dict[str, Any]:
    """`TargetKind.snapshot` of every remote kind: the state the service reported."""
    assert isinstance(obj, RemoteRecord)
    return dict(obj.state)


def signed_get(
    client: BackendClient,
    backend: Backend,
    path: str,
    *,
    request_id: str,
    trace_id: str | None = None,
    query: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any] | None]:
    """One signed GET of `path` under `backend`'s URL: the status and JSON object of an
    answer that verifies against this very request; raise ReadFailed otherwise."""
    url = httpx.URL(f"{backend.url}{path}", params=dict(query) if query else None)
    signed = signing.sign_request(
        backend.secret,
        "GET",
        url.raw_path.decode("ascii"),
        b"",
        idempotency_key="",
        request_id=request_id,
        now=client.now(),
    )
    headers = {"Accept": "application/json", "traceparent": outgoing_traceparent(trace_id)}
    pool = client.pool(backend)
    timeout = httpx.Timeout(backend.timeout, connect=backend.connect_timeout)
    sent = pool.build_request("GET", url, headers=headers | signed.headers, timeout=timeout)
    deadline = client.now() + backend.connect_timeout + backend.timeout
    try:
        response, content = exchange(pool, sent, client.now, deadline)
    except httpx.TimeoutException as exc:
        raise ReadFailed(f"no answer within {backend.timeout:.3g} s") from exc
    except httpx.TransportError as exc:
        raise ReadFailed(f"could not reach it ({type(exc).__name__})") from exc
    except UnreadableAnswer as exc:
        raise ReadFailed(str(exc)) from exc
    status = response.status_code
    try:
        signing.verify_response(
            backend.secret, signed.signature, status, content, response.headers, client.now()
        )
    except signing.SignatureError as exc:
        raise ReadFailed(f"HTTP {status}, answer not verified: {exc}") from exc
    return status, json_object(content)


def read_target(
    client: BackendClient,
    backend: Backend,
    kind: str,
    target_id: str,
    *,
    request_id: str,
    trace_id: str | None = None,
) -> RemoteRecord | None:
    """The record `kind:target_id` as its service reports it, or None when the service says
    (signed) that there is none; raise ReadFailed for anything else."""
    path = f"/v1/targets/{kind}/{urllib.parse.quote(target_id, safe='')}"
    status, body = signed_get(client, backend, path, request_id=request_id, trace_id=trace_id)
    if status == 404:
        return None
    if status != 200:
        raise ReadFailed(f"HTTP {status}")
    state = (body or {}).get("state")
    if not isinstance(state, dict):
        raise ReadFailed("HTTP 200 without a state object")
    version = state.get("version")
    if type(version) is not int or not 0 <= version <= MAX_VERSION:
        raise ReadFailed(f"HTTP 200 with a version that is not an integer in 0..{MAX_VERSION}")
    return RemoteRecord(kind, target_id, state)


def fetch(
    client: BackendClient,
    integrations: Integrations,
    kind: TargetKind,
    target_id: str,
    *,
    request_id: str,
    trace_id: str | None = None,
) -> RemoteRecord | None:
    """Read a target of remote `kind` for a request; raise TargetUnavailable (503) naming the
    service and why, when it cannot be believed or reached."""
    assert kind.remote is not None
    backend = integrations.backends.get(kind.remote)
    target = f"{kind.name}:{target_id}"
    if backend is None:
        raise TargetUnavailable(
            f"No backend {kind.remote!r} is configured to read {target}; nothing was done."
        )
    try:
        found = read_target(
            client, backend, kind.name, target_id, request_id=request_id, trace_id=trace_id
        )
    except ReadFailed as exc:
        log.warning("target_read_failed", backend=backend.name, target=target, error=str(exc))
        raise TargetUnavailable(
            f"The service {backend.name} could not say what {target} is ({exc}); nothing was done.",
            extra={"backend": backend.name},
        ) from exc
    return found
