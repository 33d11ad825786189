"""The control layer's client for remote backends (docs/backends.md is the contract).

`BackendClient.call` sends one action to the backend bound to it: signed (v2, each attempt
afresh), carrying a derived idempotency key, retried within explicit bounds, and judged by
the answer table of the contract. Only an answer bound to the very attempt it answers settles
anything (core/integrations/signing.py): a reflected request, an answer replayed from another
request and
an unsigned one are all unknown. Whatever might have run is `unknown` and is settled later
through `BackendClient.lookup`, with the same key and bound the same way.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx
import structlog

from opsgate import __version__
from opsgate.core.canonical import canonical_json
from opsgate.core.errors import (
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    OpsgateError,
    ProblemCode,
)
from opsgate.core.integrations import signing
from opsgate.core.integrations.config import Backend
from opsgate.core.request_ids import new_request_id
from opsgate.core.tracing import outgoing_traceparent

log = structlog.get_logger("opsgate.backends")

# No new attempt of one call starts later than this after its first.
DEFAULT_DEADLINE_SECONDS = 30.0
KEY_PREFIX = "og1_"
REPLAYED_HEADER = signing.REPLAYED_HEADER
# The problem code a backend gives for a lookup of a key it never saw (docs/backends.md).
OPERATION_NOT_FOUND = "operation_not_found"
MAX_ANSWER_BYTES = 1 << 20
_KEY = re.compile(r"^og1_[0-9a-f]{64}$")
_CODE = re.compile(r"^[a-z][a-z0-9_.]{0,63}$")
_SHAPED_KEYS = ("result", "before", "after", "state")


class BackendOutcome(StrEnum):
    """How one call to a backend ended, as the control layer records it."""

    SUCCEEDED = "succeeded"
    REJECTED = "rejected"
    UNAVAILABLE = "unavailable"
    UNKNOWN = "unknown"


class LookupStatus(StrEnum):
    """What the backend says about an idempotency key when reconcile asks."""

    COMPLETED = "completed"
    IN_PROGRESS = "in_progress"
    NOT_FOUND = "not_found"
    UNREACHABLE = "unreachable"  # no answer: ask again later
    INVALID = "invalid"  # an answer that does not verify or does not follow the contract


def derive_key(
    *,
    actor_id: str,
    action: str,
    client_key: str | None = None,
    approval_id: str | None = None,
    request_id: str | None = None,
) -> str:
    """The idempotency key the backend sees: the approval wins over the caller's key, which
    wins over the request ID. Deterministic; never contains the caller's key. Raises
    ValueError when none of the three is given."""
    if approval_id:
        # Whoever triggers an approved execution, it is the same execution: no actor.
        parts = ["og1", "approval", action, approval_id]
    elif client_key:
        parts = ["og1", "client", actor_id, action, client_key]
    elif request_id:
        parts = ["og1", "request", actor_id, action, request_id]
    else:
        raise ValueError("an idempotency key needs an approval ID, a client key or a request ID")
    return KEY_PREFIX + hashlib.sha256(canonical_json(parts).encode()).hexdigest()


@dataclass(frozen=True)
class BackendRequest:
    """One action for a backend to execute, after every check of the control layer."""

    action: str
    target: str
    payload: dict[str, Any] = field(hash=False)
    reason: str
    actor_id: str
    actor_name: str
    actor_roles: tuple[str, ...]
    request_id: str
    idempotency_key: str
    approval_id: str | None = None
    execution_request_id: str | None = None
    trace_id: str | None = None
    # The version of a remote target the request was judged on (approved on, for an
    # execution): the service refuses the call when its record has moved on since.
    target_version: int | None = None

    def document(self) -> dict[str, Any]:
        """The JSON document sent (docs/backends.md, "The call"); `target_version` only for
        targets of a remote kind, so backends of local kinds see the body they always saw."""
        document: dict[str, Any] = {
            "action": self.action,
            "target": self.target,
            "payload": self.payload,
            "reason": self.reason,
            "actor": {
                "id": self.actor_id,
                "name": self.actor_name,
                "roles": sorted(self.actor_roles),
            },
            "request_id": self.request_id,
            "approval_id": self.approval_id,
            "execution_request_id": self.execution_request_id,
        }
        if self.target_version is not None:
            document["target_version"] = self.target_version
        return document

    def body(self) -> bytes:
        """The exact bytes sent and signed: canonical JSON of `document()`."""
        return canonical_json(self.document()).encode()


@dataclass(frozen=True)
class BackendAnswer:
    """How a call ended. `body` is the verified JSON answer (None when there was none that
    verified); `error` is a short reason, free of secrets; `replayed` echoes the backend's
    Idempotent-Replayed header; `backend` names it in problems."""

    outcome: BackendOutcome
    http_status: int | None = None
    body: dict[str, Any] | None = field(default=None, hash=False)
    error: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    replayed: bool = False
    backend: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "outcome", BackendOutcome(self.outcome))

    @property
    def backend_code(self) -> str | None:
        """The backend's own problem code for a rejection (`http_<status>` when it gave none)."""
        if self.outcome is not BackendOutcome.REJECTED:
            return None
        return _backend_code(self.http_status, self.body)

    def problem(self) -> OpsgateError | None:
        """The error to report to the caller, or None when the backend executed the action."""
        where = {"backend": self.backend} if self.backend else {}
        name = self.backend or "(unnamed)"
        if self.outcome is BackendOutcome.SUCCEEDED:
            return None
        if self.outcome is BackendOutcome.REJECTED:
            said = (self.body or {}).get("detail")
            detail = f"The backend {name} refused the action ({self.backend_code})" + (
                f": {said[:300]}" if isinstance(said, str) and said else "."
            )
            return BackendRejected(detail, extra=where | {"backend_code": self.backend_code})
        if self.outcome is BackendOutcome.UNAVAILABLE:
            return BackendUnavailable(
                f"The backend {name} is unavailable ({self.error}); nothing was done.",
                extra=where,
            )
        return BackendTimeout(
            f"The backend {name} gave no usable answer ({self.error}); the action may "
            "have run: its outcome is unknown until it is reconciled.",
            extra=where | {"outcome": BackendOutcome.UNKNOWN.value},
        )


@dataclass(frozen=True)
class LookupAnswer:
    """The backend's word on an idempotency key; for `completed`, the answer it stored."""

    status: LookupStatus
    http_status: int | None = None
    response: dict[str, Any] | None = field(default=None, hash=False)
    error: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", LookupStatus(self.status))

    def outcome(self) -> BackendOutcome | None:
        """How the original call ended, judged like a live answer; None unless completed."""
        if self.status is not LookupStatus.COMPLETED or self.http_status is None:
            return None
        return _judge(self.http_status, self.response)[0]


@dataclass(frozen=True)
class _Attempt:
    outcome: BackendOutcome
    retry: bool
    http_status: int | None = None
    body: dict[str, Any] | None = None
    error: str | None = None
    replayed: bool = False


class UnreadableAnswer(Exception):
    """The answer's body was too large or too slow to read (its text says which)."""


def json_object(content: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(content)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _backend_code(status: int | None, body: dict[str, Any] | None) -> str:
    code = (body or {}).get("code")
    return code if isinstance(code, str) and _CODE.fullmatch(code) else f"http_{status}"


def _judge(status: int, body: dict[str, Any] | None) -> tuple[BackendOutcome, bool, str | None]:
    """(outcome, worth retrying with the same key, error) for a verified answer."""
    if status == 200:
        if body is None or any(not isinstance(body.get(k), dict | None) for k in _SHAPED_KEYS):
            return BackendOutcome.UNKNOWN, True, "HTTP 200 with a malformed body"
        return BackendOutcome.SUCCEEDED, False, None
    if status == 503:
        return BackendOutcome.UNAVAILABLE, True, "HTTP 503"
    if status == 401:
        return BackendOutcome.UNAVAILABLE, False, "HTTP 401: the backend refused our signature"
    code = (body or {}).get("code")
    if status == 409 and code == ProblemCode.IDEMPOTENCY_IN_FLIGHT:
        return BackendOutcome.UNKNOWN, True, "HTTP 409: still running there (idempotency_in_flight)"
    if 400 <= status < 500:
        return (
            BackendOutcome.REJECTED,
            False,
            f"HTTP {status}: refused ({_backend_code(status, body)})",
        )
    return BackendOutcome.UNKNOWN, True, f"HTTP {status}"


class BackendClient:
    """Calls remote backends; one per process, safe to share between threads. Keeps one
    connection pool per backend until `close()`. `sleep`, `clock` (Unix seconds: signatures,
    the deadline) and `jitter` (in [0, 1), scaling each backoff pause) are injectable."""

    def __init__(
        self,
        *,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        backoff_cap_seconds: float = 5.0,
        max_connections: int = 10,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._deadline = deadline_seconds
        self._backoff_cap = backoff_cap_seconds
        self._limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._sleep = sleep
        self._clock = clock
        self._jitter = jitter
        self._clients: dict[Backend, httpx.Client] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> BackendClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection pool; later calls raise RuntimeError."""
        with self._lock:
            self._closed = True
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def _client(self, backend: Backend) -> httpx.Client:
        with self._lock:
            if self._closed:
                raise RuntimeError("the backend client is closed")
            client = self._clients.get(backend)
            if client is None:
                client = httpx.Client(
                    timeout=httpx.Timeout(
                        backend.timeout, connect=backend.connect_timeout, pool=backend.timeout
                    ),
                    limits=self._limits,
                    headers={"User-Agent": f"opsgate/{__version__}"},
                )
                self._clients[backend] = client
            return client

    def pool(self, backend: Backend) -> httpx.Client:
        """The connection pool to `backend` (for the signed reads of remote_targets.py)."""
        return self._client(backend)

    def now(self) -> float:
        """This client's clock (Unix seconds), the one signatures are made and checked with."""
        return self._clock()

    def call(self, backend: Backend, request: BackendRequest) -> BackendAnswer:
        """POST the action to `backend` under the bounds of its configuration and this
        client's deadline. Never raises for what the backend does or fails to do: every end
        is a BackendAnswer (RuntimeError only when the client is closed)."""
        client = self._client(backend)
        url = f"{backend.url}/v1/actions/{request.action}"
        path = httpx.URL(url).raw_path.decode("ascii")
        body = request.body()
        started = self._clock()
        deadline = started + self._deadline
        attempt = 0
        maybe_ran = False
        result = _Attempt(BackendOutcome.UNKNOWN, True)
        while attempt < backend.max_attempts:
            if attempt:
                pause = min(self._backoff_cap, backend.backoff * 2 ** (attempt - 1))
                pause *= self._jitter()
                if self._clock() + pause >= deadline:
                    break
                self._sleep(pause)
            attempt += 1
            began = self._clock()
            # Each attempt is signed afresh (a new nonce): its answer verifies only for it.
            signed = signing.sign_request(
                backend.secret,
                "POST",
                path,
                body,
                idempotency_key=request.idempotency_key,
                request_id=request.request_id,
                now=began,
            )
            headers = {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "traceparent": outgoing_traceparent(request.trace_id),
            } | signed.headers
            result = self._attempt(client, backend, url, body, signed, headers, deadline)
            maybe_ran = maybe_ran or result.outcome is BackendOutcome.UNKNOWN
            succeeded = result.outcome is BackendOutcome.SUCCEEDED
            (log.info if succeeded else log.warning)(
                "backend_call",
                backend=backend.name,
                action=request.action,
                attempt=attempt,
                outcome=result.outcome.value,
                http_status=result.http_status,
                duration_ms=round((self._clock() - began) * 1000),
                error=result.error,
            )
            if not result.retry:
                break
        outcome, error = result.outcome, result.error
        if outcome is BackendOutcome.UNAVAILABLE and maybe_ran:
            # A later refusal to serve says nothing about an earlier attempt that may have run.
            outcome, error = BackendOutcome.UNKNOWN, f"{error}; an earlier attempt may have run"
        return BackendAnswer(
            outcome=outcome,
            http_status=result.http_status,
            body=result.body,
            error=error,
            attempts=attempt,
            seconds=self._clock() - started,
            replayed=result.replayed,
            backend=backend.name,
        )

    def _attempt(
        self,
        client: httpx.Client,
        backend: Backend,
        url: str,
        body: bytes,
        signed: signing.SignedRequest,
        headers: dict[str, str],
        deadline: float,
    ) -> _Attempt:
        remaining = max(deadline - self._clock(), 0.001)
        read = min(backend.timeout, remaining)
        timeout = httpx.Timeout(read, connect=min(backend.connect_timeout, remaining))
        sent = client.build_request("POST", url, content=body, headers=headers, timeout=timeout)
        try:
            response, content = exchange(client, sent, self._clock, deadline)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout):
            return _Attempt(BackendOutcome.UNAVAILABLE, True, error="could not connect")
        except httpx.TimeoutException:
            return _Attempt(BackendOutcome.UNKNOWN, True, error=f"no answer within {read:.3g} s")
        except httpx.TransportError as exc:
            return _Attempt(
                BackendOutcome.UNKNOWN,
                True,
                error=f"the connection failed after the request was sent ({type(exc).__name__})",
            )
        except UnreadableAnswer as exc:
            return _Attempt(BackendOutcome.UNKNOWN, True, error=str(exc))
        status = response.status_code
        try:
            signing.verify_response(
                backend.secret, signed.signature, status, content, response.headers, self._clock()
            )
        except signing.SignatureError as exc:
            hint = ": the backend refused our signature" if status == 401 else ""
            return _Attempt(
                BackendOutcome.UNKNOWN,
                True,
                http_status=status,
                error=f"HTTP {status}{hint}, answer not verified: {exc}",
            )
        parsed = json_object(content)
        outcome, retry, error = _judge(status, parsed)
        return _Attempt(
            outcome,
            retry,
            http_status=status,
            body=parsed,
            error=error,
            replayed=response.headers.get(REPLAYED_HEADER, "").lower() == "true",
        )

    def lookup(
        self, backend: Backend, idempotency_key: str, *, request_id: str | None = None
    ) -> LookupAnswer:
        """Ask `backend` once what became of `idempotency_key` (signed GET). Never raises for
        what the backend does; raises ValueError for a key this module did not derive."""
        if not _KEY.fullmatch(idempotency_key):
            raise ValueError("not a derived idempotency key")
        client = self._client(backend)
        url = f"{backend.url}/v1/operations/{idempotency_key}"
        path = httpx.URL(url).raw_path.decode("ascii")
        # Bound like a call: the answer must verify against this very lookup, so an answer
        # given to an earlier lookup (say, "never seen" before the call ran) is refused.
        signed = signing.sign_request(
            backend.secret,
            "GET",
            path,
            b"",
            idempotency_key=idempotency_key,
            request_id=request_id or new_request_id(),
            now=self._clock(),
        )
        headers = {
            "Accept": "application/json",
            "traceparent": outgoing_traceparent(),
        } | signed.headers
        deadline = self._clock() + backend.connect_timeout + backend.timeout
        try:
            response, content = exchange(
                client, client.build_request("GET", url, headers=headers), self._clock, deadline
            )
        except httpx.TransportError as exc:
            answer = LookupAnswer(
                LookupStatus.UNREACHABLE, error=f"no answer ({type(exc).__name__})"
            )
        except UnreadableAnswer as exc:
            answer = LookupAnswer(LookupStatus.UNREACHABLE, error=str(exc))
        else:
            answer = self._judge_lookup(backend, signed, response, content)
        log.info(
            "backend_lookup", backend=backend.name, status=answer.status.value, error=answer.error
        )
        return answer

    def _judge_lookup(
        self,
        backend: Backend,
        signed: signing.SignedRequest,
        response: httpx.Response,
        content: bytes,
    ) -> LookupAnswer:
        status = response.status_code
        try:
            signing.verify_response(
                backend.secret, signed.signature, status, content, response.headers, self._clock()
            )
        except signing.SignatureError as exc:
            return LookupAnswer(LookupStatus.INVALID, error=f"HTTP {status}, not verified: {exc}")
        body = json_object(content) or {}
        if status == 503:
            return LookupAnswer(LookupStatus.UNREACHABLE, error="HTTP 503")
        if status == 404 and body.get("code") == OPERATION_NOT_FOUND:
            return LookupAnswer(LookupStatus.NOT_FOUND)
        if status == 200 and body.get("status") == "in_progress":
            return LookupAnswer(LookupStatus.IN_PROGRESS)
        stored_status, stored = body.get("http_status"), body.get("response")
        if (
            status == 200
            and body.get("status") == "completed"
            and type(stored_status) is int
            and isinstance(stored, dict)
        ):
            return LookupAnswer(LookupStatus.COMPLETED, http_status=stored_status, response=stored)
        return LookupAnswer(LookupStatus.INVALID, error=f"HTTP {status} outside the contract")


def exchange(
    client: httpx.Client, request: httpx.Request, clock: Callable[[], float], deadline: float
) -> tuple[httpx.Response, bytes]:
    """Send `request` and read the whole answer, unless it runs past MAX_ANSWER_BYTES or the
    deadline (a slow drip would otherwise renew the read timeout with every byte)."""
    response = client.send(request, stream=True)
    try:
        content = bytearray()
        for chunk in response.iter_bytes():
            content += chunk
            if len(content) > MAX_ANSWER_BYTES:
                raise UnreadableAnswer(f"an answer over {MAX_ANSWER_BYTES} bytes")
            if clock() > deadline:
                raise UnreadableAnswer("an answer still arriving at the deadline")
        return response, bytes(content)
    finally:
        response.close()
