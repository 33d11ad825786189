"""`/actions`: list what the actor may start; start one through the gateway."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from opsgate.core.actions.gateway import ActionEnvelope, ActionResult, Replayed
from opsgate.web.deps import CurrentActor, OriginDep, ServicesDep, authenticate

router = APIRouter(tags=["actions"])

_ENVELOPE_SCHEMA = ActionEnvelope.model_json_schema()


@router.get("/actions")
def list_actions(actor: CurrentActor, services: ServicesDep, request: Request) -> dict[str, Any]:
    """The actions this actor may start, with their payload JSON schemas."""
    return {
        "request_id": request.scope["state"]["request_id"],
        "items": [
            {
                "name": spec.name,
                "label": spec.label,
                "description": spec.description,
                "risk": spec.risk.value,
                "target_kind": spec.target_kind,
                "payload_schema": spec.payload_schema(),
            }
            for spec in services.gateway.startable(actor)
        ],
    }


@router.post(
    "/actions/{name}",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ENVELOPE_SCHEMA}},
        }
    },
    responses={
        202: {"description": "Held for approval: `{status, approval_id, request_id}`"},
        200: {"description": "Executed: `{status, request_id, result, audit_id}`"},
    },
)
async def start_action(
    name: str,
    request: Request,
    services: ServicesDep,
    origin: OriginDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Start an action. The body is validated by the gateway, after the permission check, so
    that a caller without permission learns nothing about the payload's shape. Money-moving
    actions need an `Idempotency-Key`; a retry with the same key replays the first answer
    (`Idempotent-Replayed: true`)."""
    body = await request.body()

    def run() -> ActionResult | Replayed:
        # Authentication and the action share one worker thread: the hot path of the API.
        actor = authenticate(request, services, origin)
        return services.gateway.submit(actor, name, body, origin, idempotency_key)

    result = await run_in_threadpool(run)
    if result.replayed:
        stored = result.body()
        media_type = "application/problem+json" if result.http_status >= 400 else None
        return JSONResponse(
            stored,
            status_code=result.http_status,
            media_type=media_type,
            headers={"Idempotent-Replayed": "true"},
        )
    return JSONResponse(result.body(), status_code=result.http_status)
