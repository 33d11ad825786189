"""RFC 9457 problem responses. Every error leaves opsgate in this one shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsgate.core.errors import OpsgateError, ProblemCode, problem_body

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
    return problem(
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        request_id=request_id,
        errors=error.errors,
        headers=headers,
        extra=error.extra,
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""

    async def on_opsgate_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, OpsgateError)
        return from_error(exc, request_id_of(request))

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
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
