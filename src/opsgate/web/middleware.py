"""Request context: the request ID, the trace, the log context and the access log line.

A pure ASGI middleware (no response buffering). It is the outermost opsgate layer, so it also
turns an unhandled exception into a problem response that still carries the request ID.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from opsgate.core.errors import ProblemCode
from opsgate.web.problems import problem
from opsgate.web.tracing import open_request

log = structlog.get_logger("opsgate.http")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The caller's W3C trace continued (or a new one); the OpenTelemetry span's when on.
        request_id, trace = open_request(scope)
        state: dict[str, Any] = scope["state"]
        started = time.perf_counter()
        response_started = False
        status = 500

        async def send_with_request_id(message: Message) -> None:
            nonlocal response_started, status
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                response_headers["X-Request-ID"] = request_id
                response_headers["traceresponse"] = trace.header()
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        except Exception:
            log.exception("unhandled_error", path=scope["path"])
            if response_started:
                raise
            response = problem(
                status=500,
                code=ProblemCode.INTERNAL_ERROR,
                title="Internal error",
                detail="The server failed to complete the request; quote the request ID.",
                request_id=request_id,
            )
            await response(scope, receive, send_with_request_id)
        finally:
            log.info(
                "http_request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                actor=state.get("actor_id"),
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
