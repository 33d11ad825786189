"""`/actions`: list what the actor may start; start one through the gateway."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from opsgate.core.gateway import ActionEnvelope
from opsgate.web.deps import CurrentActor, OriginDep, ServicesDep

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
)
async def start_action(
    name: str,
    request: Request,
    response: Response,
    actor: CurrentActor,
    services: ServicesDep,
    origin: OriginDep,
) -> dict[str, Any]:
    """Start an action. The body is validated by the gateway, after the permission check, so
    that a caller without permission learns nothing about the payload's shape."""
    body = await request.body()
    result = await run_in_threadpool(services.gateway.submit, actor, name, body, origin)
    if result.approval_id is not None:
        response.status_code = 202
        return {
            "status": result.status,
            "approval_id": result.approval_id,
            "request_id": result.request_id,
            "audit_id": result.audit_id,
        }
    return {
        "status": result.status,
        "request_id": result.request_id,
        "result": result.result,
        "audit_id": result.audit_id,
    }
