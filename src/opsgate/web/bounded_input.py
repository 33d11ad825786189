"""Bounded input: every request body is read here, whole, before any route sees it.

Three promises, each kept before authentication and before a worker thread is taken:
- size: a body larger than the limit is refused (413 `payload_too_large`) by its declared
  `Content-Length` before a byte of it is read, or, sent chunked and unannounced, as soon as
  what has arrived passes the limit. Requests that carry no credentials at all (no
  `Authorization` header, no console session cookie) get the small limit: a forged credential
  buys the larger one, which is still small, and checking it here would need the database;
- time: the whole body must arrive within the read timeout (408 `request_timeout`), so a
  stalled client holds no more than a coroutine, for a bounded time;
- content: the path, the query parameters and JSON or form bodies hold no NUL character or
  lone surrogate, and JSON nests no deeper than `MAX_JSON_DEPTH` (422 `invalid_payload`), so
  that neither the parser nor the database fails on them (core/actions/input_checks.py).

Every refusal is an audited problem response with the request ID. opsgate has no streaming
uploads, so reading bodies whole (at most `body_limit_bytes`) costs nothing its routes did not.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsgate.core.actions.input_checks import UnsafeInput, load_json, problem, unsafe_character
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import InvalidPayload, OpsgateError, PayloadTooLarge, RequestTimeout
from opsgate.web.deps import origin_of
from opsgate.web.problems import from_error
from opsgate.web.security import SESSION_COOKIE
from opsgate.web.services import Services

_FORM = "application/x-www-form-urlencoded"
_PARSE_INLINE_BYTES = 64 * 1024


class _ClientGone(Exception):
    """The client disconnected before its body arrived: there is no one to answer."""


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    # FastAPI parses a body without a content type as JSON too.
    return media in ("", "application/json") or media.endswith("+json")


def _has_credentials(headers: Headers) -> bool:
    return "authorization" in headers or f"{SESSION_COOKIE}=" in headers.get("cookie", "")


def _check_pairs(text: str, where: str) -> None:
    errors = []
    for name, value in parse_qsl(text, keep_blank_values=True):
        kind = unsafe_character(name) or unsafe_character(value)
        if kind:
            loc: list[str | int] = [where] if unsafe_character(name) else [where, name]
            errors.append(problem(loc, kind))
    if errors:
        raise UnsafeInput(errors[:10])


def check_request_line(scope: Scope) -> None:
    """Raise UnsafeInput when the path or a query parameter holds an unsafe character."""
    kind = unsafe_character(scope["path"])
    if kind:
        raise UnsafeInput([problem(["path"], kind)])
    _check_pairs(scope.get("query_string", b"").decode("latin-1"), "query")


def check_body(headers: Headers, body: bytes) -> None:
    """Raise UnsafeInput for a JSON or form body the routes must not see. Malformed JSON is
    left to the route, which refuses it with its own message."""
    if not body:
        return
    content_type = headers.get("content-type", "")
    if _is_json(content_type):
        try:
            load_json(body)
        except UnsafeInput:
            raise
        except ValueError:
            return
    elif content_type.split(";", 1)[0].strip().lower() == _FORM:
        _check_pairs(body.decode("latin-1"), "body")


class BoundedInputMiddleware:
    """Read, bound and check each request's body before the app runs (see the module)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services
        settings = services.settings
        self.limit = settings.body_limit_bytes
        self.unauthenticated_limit = settings.body_limit_unauthenticated_bytes
        self.timeout = settings.body_read_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.limit if _has_credentials(headers) else self.unauthenticated_limit
        params: dict[str, Any] = {"limit_bytes": limit}
        try:
            check_request_line(scope)
            body = await self._read(headers, receive, limit, params)
            if len(body) > _PARSE_INLINE_BYTES:  # parsing a large body would stall the loop
                await run_in_threadpool(check_body, headers, body)
            else:
                check_body(headers, body)
        except _ClientGone:
            return
        except UnsafeInput as exc:
            error: OpsgateError = InvalidPayload(
                "The request holds input opsgate cannot accept.", errors=exc.errors
            )
            # Where and what kind, never the value: the refusal's own record must be writable.
            where = [{"loc": e["loc"], "type": e["type"]} for e in exc.errors]
            await self._refuse(scope, send, error, {"errors": where})
            return
        except OpsgateError as exc:
            await self._refuse(scope, send, exc, params)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read(
        self, headers: Headers, receive: Receive, limit: int, params: dict[str, Any]
    ) -> bytes:
        declared = headers.get("content-length")
        if declared is None and "transfer-encoding" not in headers:
            return b""  # no body (HTTP/1.1 framing): nothing to wait for
        if declared is not None and declared.isdigit() and int(declared) > limit:
            params["declared_bytes"] = int(declared)
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        chunks: list[bytes] = []
        received = 0
        try:
            with anyio.fail_after(self.timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    chunk = message.get("body", b"")
                    received += len(chunk)
                    if received > limit:
                        params["received_bytes"] = received
                        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            params |= {"received_bytes": received, "timeout_seconds": self.timeout}
            raise RequestTimeout(
                f"The request body did not arrive within {self.timeout:g} seconds."
            ) from None

    async def _refuse(
        self, scope: Scope, send: Send, error: OpsgateError, params: dict[str, Any]
    ) -> None:
        request = Request(scope)
        # The path may be the very thing refused: record it only as it can be stored.
        path = "".join("?" if unsafe_character(c) else c for c in scope["path"])
        entry = AuditEntry(
            action=f"http:{scope['method']} {path}"[:128],
            result=AuditResult.INVALID,
            parameters=params,
        )
        await run_in_threadpool(
            self.services.gateway.audit_refusal, error, entry, None, origin_of(request)
        )
        response = from_error(error, str(scope["state"]["request_id"]))
        if isinstance(error, PayloadTooLarge | RequestTimeout):
            # The rest of the body is never read: the connection cannot carry another request.
            response.headers["Connection"] = "close"
        await response(scope, _nothing, send)


async def _nothing() -> Message:
    return {"type": "http.disconnect"}


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body, once, then the client's own messages (a disconnect, for streaming answers)."""
    delivered = False

    async def replayed() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
