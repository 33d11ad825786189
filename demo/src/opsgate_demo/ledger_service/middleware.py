"""Every HTTP exchange of the ledger service: its log context, its access line, its signature.

A pure ASGI middleware, the outermost layer. It binds `service`, the caller's `request_id`
(X-Request-ID) and `trace_id` (traceparent) to every log line of the request, writes one
access line, turns an unhandled exception into a problem answer, and signs the answer to
every request whose signature verified (docs/backends.md): v2, bound to that request's own
signature, over the status, the Idempotent-Replayed marker and the body, with the secret
that verified it; v1 (unbound) only for a v1 request accepted during a migration window.

The answer to a request that did not verify (a 401, an unknown route, the health check) is
not signed: the service cannot know whom it answers, and an answer it signed bound to a
signature it could not check could be passed off as the answer to a genuine request. Answers
are small JSON documents, so the body is buffered to sign it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsgate.core.integrations import signing
from opsgate.web.tracing import open_request
from opsgate_demo.ledger_service.answers import LedgerProblem, problem

log = structlog.get_logger("opsgate.ledger.http")
# Set in the request's state by the route that verified its signature: the
# `signing.VerifiedRequest` its answer is signed for. Unset: the answer goes unsigned.
VERIFIED_REQUEST = "verified_request"


def signed_path(scope: Scope) -> str:
    """The path with its query, as the client sent it (what a signature covers)."""
    raw = scope.get("raw_path") or scope["path"].encode()
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


class LedgerContextMiddleware:
    def __init__(self, app: ASGIApp, now: Callable[[], float]) -> None:
        self.app = app
        self._now = now

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id, _trace = open_request(scope, service="ledger")
        state: dict[str, Any] = scope["state"]
        method, path = scope["method"], signed_path(scope)
        started = time.perf_counter()
        start: dict[str, Any] = {}
        chunks: list[bytes] = []
        status, sent = 500, False

        async def signing_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body, status = b"".join(chunks), int(start["status"])
            outgoing = MutableHeaders(scope=start)
            outgoing["X-Request-ID"] = request_id
            verified = state.get(VERIFIED_REQUEST)
            if isinstance(verified, signing.VerifiedRequest):
                for name, value in self._signature(verified, method, path, status, body, outgoing):
                    outgoing[name] = value
            await send(start)
            sent = True
            await send({"type": "http.response.body", "body": body, "more_body": False})

        try:
            await self.app(scope, receive, signing_send)
        except Exception:
            log.exception("unhandled_error", path=scope["path"])
            if sent:
                raise
            start.clear()
            chunks.clear()
            detail = "The ledger failed to complete the request; quote the request ID."
            answer = problem(500, LedgerProblem.INTERNAL_ERROR, detail, request_id)
            await answer.response()(scope, receive, signing_send)
        finally:
            log.info(
                "http_request",
                method=method,
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )

    def _signature(
        self,
        verified: signing.VerifiedRequest,
        method: str,
        path: str,
        status: int,
        body: bytes,
        outgoing: MutableHeaders,
    ) -> Iterable[tuple[str, str]]:
        if verified.version is signing.SignatureVersion.V1:
            return signing.sign_v1(verified.secret, method, path, body, self._now()).items()
        replayed = outgoing.get(signing.REPLAYED_HEADER, "").lower() == "true"
        headers = signing.sign_response(
            verified.secret, verified.signature, status, body, self._now(), replayed=replayed
        )
        return headers.items()
