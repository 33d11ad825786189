"""FastAPI dependencies: the services, the caller's origin and the authenticated actor."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from opsgate.core.actions.policy import Capability
from opsgate.core.audit.records import AuditEntry, AuditResult
from opsgate.core.errors import AuthenticationRateLimited, Unauthenticated
from opsgate.core.identity import tokens
from opsgate.core.identity.actors import Actor, Origin
from opsgate.core.identity.auth_refusals import Refusals
from opsgate.web.services import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def origin_of(request: Request) -> Origin:
    """Where a request came from, for the audit record (request and trace IDs set by the
    middleware)."""
    return Origin(
        request_id=str(request.scope["state"]["request_id"]),
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        trace_id=request.scope["state"].get("trace_id"),
        client_request_id=request.scope["state"].get("client_request_id"),
    )


async def get_origin(request: Request) -> Origin:
    return origin_of(request)


OriginDep = Annotated[Origin, Depends(get_origin)]


def _bearer(request: Request) -> str | None:
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return secret.strip() or None if scheme.lower() == "bearer" else None


def refusals_of(services: Services) -> Refusals:
    """Where refused authentications are counted and audited (per source and minute)."""
    return Refusals(services.gateway, services.settings.auth_refusals_per_minute)


def authenticate(request: Request, services: Services, origin: Origin) -> Actor:
    """Authenticate the bearer token; an unknown, expired or revoked one is 401, counted and
    audited per source and minute, and 429 past the limit. Blocking: call it from a worker
    thread."""
    now = services.clock.now()
    try:
        with services.db.reading() as session:
            auth = tokens.authenticate(session, _bearer(request), now=now)
    except Unauthenticated as exc:
        refusal = AuditEntry(
            action="auth.token",
            result=AuditResult.DENIED,
            parameters={"method": request.method, "path": request.url.path[:200]},
            error_code=exc.code.value,
            error_message=exc.detail,
        )
        # Counted per source and minute, not one audit record each (core/identity/auth_refusals.py).
        if refusals_of(services).refuse(refusal, origin):
            raise AuthenticationRateLimited(
                "Too many refused authentications from this address; wait a minute.",
                extra={"retry_after_seconds": 60},
            ) from exc
        raise
    if auth.needs_touch and auth.actor.credential_id:
        with services.db.writing() as session:
            tokens.touch(session, auth.actor.credential_id, now=now)
            session.commit()
    request.scope["state"]["actor_id"] = auth.actor.id
    request.scope["state"]["actor"] = auth.actor
    return auth.actor


def get_actor(request: Request, services: ServicesDep, origin: OriginDep) -> Actor:
    return authenticate(request, services, origin)


CurrentActor = Annotated[Actor, Depends(get_actor)]


def require(capability: Capability) -> Any:
    """A dependency that lets the request through only when the actor holds `capability`."""

    def check(actor: CurrentActor, services: ServicesDep, origin: OriginDep) -> Actor:
        services.require(actor, capability, origin)
        return actor

    return Depends(check)
