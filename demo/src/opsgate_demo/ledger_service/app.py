"""The ledger service's ASGI application (`opsgate demo ledger-service serve`).

    POST /v1/actions/{action}       run `payment.reverse` or `account.adjust_balance`
    GET  /v1/operations/{key}       what became of an idempotency key (for `opsgate reconcile`)
    GET  /healthz                   liveness

Both `/v1` routes take signed requests only (core/integrations/signing.py, v2; v1 too while
`OPSGATE_LEDGER_ACCEPT_SIGNATURE_V1` is set); every answer to a request that verified is
signed, bound to that request. Refusals of a request that did not verify are not signed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from opsgate import __version__
from opsgate.core.actions.idempotency import check_key
from opsgate.core.actions.registry import TargetRef
from opsgate.core.clock import Clock, SystemClock
from opsgate.core.errors import IdempotencyKeyRequired
from opsgate.core.integrations import signing
from opsgate.db.engine import Database
from opsgate.logging import configure_logging
from opsgate.web.tracing import setup as setup_tracing
from opsgate_demo.ledger_service.answers import Answer, LedgerProblem, problem
from opsgate_demo.ledger_service.catalog import ACTIONS
from opsgate_demo.ledger_service.envelope import ActionCall
from opsgate_demo.ledger_service.middleware import (
    VERIFIED_REQUEST,
    LedgerContextMiddleware,
    signed_path,
)
from opsgate_demo.ledger_service.operations import Call, Ledger
from opsgate_demo.ledger_service.settings import LedgerSettings


def create_app(
    settings: LedgerSettings | None = None,
    *,
    clock: Clock | None = None,
    configure_logs: bool = True,
) -> FastAPI:
    """Build the service. Raises pydantic's ValidationError when the settings are incomplete
    (no secret, or one shorter than 32 characters)."""
    settings = settings or LedgerSettings()
    if configure_logs:
        configure_logging(settings.log_level)
    clock = clock or SystemClock()
    db = Database(settings.database_url)
    ledger = Ledger(db, clock)
    secrets = settings.verifying_secrets()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        db.dispose()

    app = FastAPI(
        title="opsgate demo ledger",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    def now() -> float:
        return clock.now().timestamp()

    async def verified(request: Request) -> tuple[bytes, float] | Answer:
        """The request's body and signing time, or the 401 answer refusing it. The request's
        Idempotency-Key and X-Request-ID are part of what its (v2) signature covers."""
        body = await request.body()
        try:
            checked = signing.verify_request(
                secrets,
                request.method,
                signed_path(request.scope),
                body,
                request.headers,
                now(),
                accept_v1=settings.accept_signature_v1,
            )
        except signing.SignatureError as exc:
            return problem(401, LedgerProblem.UNAUTHENTICATED, str(exc), _request_id(request))
        # The answer is signed with the secret that verified the request (during a rotation,
        # the one the caller holds), in its version, bound to its signature (middleware.py).
        request.scope["state"][VERIFIED_REQUEST] = checked
        return body, float(checked.timestamp)

    @app.post("/v1/actions/{action}")
    async def run_action(action: str, request: Request) -> Response:
        checked = await verified(request)
        if isinstance(checked, Answer):
            return checked.response()
        body, signed_at = checked
        call = _call(action, request, body, signed_at + signing.DEFAULT_TOLERANCE_SECONDS)
        if isinstance(call, Answer):
            return call.response()
        answer = await run_in_threadpool(ledger.perform, call)
        return answer.response()

    @app.get("/v1/operations/{key}")
    async def operation(key: str, request: Request) -> Response:
        checked = await verified(request)
        if isinstance(checked, Answer):
            return checked.response()
        answer = await run_in_threadpool(ledger.lookup, key, _request_id(request))
        return answer.response()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: LedgerProblem.NOT_FOUND, 405: LedgerProblem.METHOD_NOT_ALLOWED}.get(
            exc.status_code, LedgerProblem.INTERNAL_ERROR
        )
        answer = problem(exc.status_code, code, str(exc.detail), _request_id(request))
        return answer.response()

    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_middleware(LedgerContextMiddleware, now=now)
    # OpenTelemetry only when the OTEL_ variables ask for it (web/tracing.py), as in opsgate.
    app.state.tracing = setup_tracing(app, db.engine)
    return app


def _request_id(request: Request) -> str:
    return str(request.scope["state"]["request_id"])


def _invalid(detail: str, request: Request, errors: list[dict[str, Any]] | None = None) -> Answer:
    return problem(422, LedgerProblem.INVALID_PAYLOAD, detail, _request_id(request), errors=errors)


def _errors(exc: ValidationError, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    # Never the input: a body may carry what does not belong in an answer or a log.
    return [{"loc": [*prefix, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def _call(action: str, request: Request, body: bytes, deadline: float) -> Call | Answer:
    """The validated call, or the answer refusing it (404, 400, 422), in that order."""
    request_id = _request_id(request)
    known = ACTIONS.get(action)
    if known is None:
        detail = f"This ledger runs {', '.join(sorted(ACTIONS))}; not {action!r}."
        return problem(404, LedgerProblem.UNKNOWN_ACTION, detail, request_id)
    try:
        key = check_key(request.headers.get("Idempotency-Key"), required=True)
    except IdempotencyKeyRequired as exc:
        return problem(400, LedgerProblem.IDEMPOTENCY_KEY_REQUIRED, exc.detail, request_id)
    assert key is not None
    try:
        envelope = ActionCall.model_validate(json.loads(body))
    except ValidationError as exc:
        return _invalid("The body is not an action call.", request, _errors(exc))
    except ValueError:  # not JSON, or not UTF-8
        return _invalid("The body is not JSON.", request)
    if envelope.action != action:
        return _invalid(f"The body names {envelope.action!r}, the path {action!r}.", request)
    try:
        target = TargetRef.parse(envelope.target)
    except ValueError as exc:
        return _invalid(str(exc), request)
    if target.kind != known.kind.name:
        return _invalid(f"{action} acts on a {known.kind.name}, not a {target.kind}.", request)
    try:
        payload = known.spec.payload_model.model_validate(envelope.payload)
    except ValidationError as exc:
        return _invalid("The payload is invalid.", request, _errors(exc, ("payload",)))
    return Call(known, envelope, payload, target, key, request_id, deadline)
