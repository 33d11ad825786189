"""RFC 9457 problem responses. Every error leaves opsgate in this one shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsgate.core.audit import AuditEntry, AuditResult
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
        code = {404: ProblemCode.NOT_FOUND, 405: ProblemCode.METHOD_NOT_ALLOWED}.get(
            exc.status_code, ProblemCode.INTERNAL_ERROR
        )
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
