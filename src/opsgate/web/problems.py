"""RFC 9457 problem responses. Every error leaves opsgate in this one shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import (
    InvalidPayload,
    OpsgateError,
    ProblemCode,
    error_body,
    problem_body,
)
from opsgate.web.deps import origin_of

MEDIA_TYPE = "application/problem+json"


def problem(
    *,
    status: int,
    code: ProblemCode | str,
    title: str,
    detail: str,
    request_id: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = problem_body(
        status=status,
        code=code,
        title=title,
        detail=detail,
        request_id=request_id,
        errors=errors,
        extra=extra,
    )
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def request_id_of(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


def from_error(error: OpsgateError, request_id: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="opsgate"'} if error.status == 401 else None
    return JSONResponse(
        error_body(error, request_id),
        status_code=error.status,
        media_type=MEDIA_TYPE,
        headers=headers,
    )


def _audit_invalid_request(request: Request, errors: list[dict[str, Any]]) -> None:
    """Parameters refused by FastAPI itself are refusals too: record them like the gateway's."""
    services = request.app.state.services
    entry = AuditEntry(
        action=f"http:{request.method} {request.url.path}"[:128],
        result=AuditResult.INVALID,
        parameters={"errors": [{"loc": e["loc"], "type": e["type"]} for e in errors]},
    )
    origin = origin_of(request)
    error = InvalidPayload("The request's parameters are invalid.", errors=errors)
    services.gateway.audit_refusal(error, entry, request.scope["state"].get("actor"), origin)


# Every 4xx has its own code: `internal_error` is for 5xx alone.
HTTP_CODES = {
    400: ProblemCode.BAD_REQUEST,
    401: ProblemCode.UNAUTHENTICATED,
    403: ProblemCode.FORBIDDEN,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    408: ProblemCode.REQUEST_TIMEOUT,
    413: ProblemCode.PAYLOAD_TOO_LARGE,
    415: ProblemCode.UNSUPPORTED_MEDIA_TYPE,
    422: ProblemCode.INVALID_PAYLOAD,
    429: ProblemCode.LIMIT_EXCEEDED,
}
# An unknown page or method is not a refusal of anything; every other 4xx is audited.
UNAUDITED_STATUSES = frozenset({404, 405})


def http_code(status: int) -> ProblemCode:
    """The problem code of an HTTP error raised by the framework or a route."""
    fallback = ProblemCode.BAD_REQUEST if status < 500 else ProblemCode.INTERNAL_ERROR
    return HTTP_CODES.get(status, fallback)


def _audit_http_refusal(request: Request, status: int, code: ProblemCode) -> None:
    """A framework-level client error (e.g. a body FastAPI could not parse) is a refusal too."""
    services = request.app.state.services
    entry = AuditEntry(
        action=f"http:{request.method} {request.url.path}"[:128],
        result=AuditResult.INVALID,
        parameters={"status": status},
        error_code=code.value,
    )
    error = OpsgateError(f"HTTP {status}")
    actor = request.scope["state"].get("actor")
    services.gateway.audit_refusal(error, entry, actor, origin_of(request))


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    async def on_opsgate_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpsgateError)
        return from_error(exc, request_id_of(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        await run_in_threadpool(_audit_invalid_request, request, errors)
        return problem(
            status=422,
            code=ProblemCode.INVALID_PAYLOAD,
            title="Invalid request",
            detail="The request's parameters are invalid.",
            request_id=request_id_of(request),
            errors=errors,
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = http_code(exc.status_code)
        if 400 <= exc.status_code < 500 and exc.status_code not in UNAUDITED_STATUSES:
            await run_in_threadpool(_audit_http_refusal, request, exc.status_code, code)
        return problem(
            status=exc.status_code,
            code=code,
            title=str(code).replace("_", " ").capitalize(),
            detail=str(exc.detail),
            request_id=request_id_of(request),
            headers=dict(exc.headers) if exc.headers else None,
        )

    app.add_exception_handler(OpsgateError, on_opsgate_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)


__all__ = ["install", "problem", "request_id_of"]
