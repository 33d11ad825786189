"""Single sign-on with OpenID Connect (Authlib), on when OPSGATE_OIDC_ISSUER is set.

`GET /console/sign-in/oidc` sends the browser to the identity provider (authorization code
flow with PKCE and a nonce; endpoints from `{issuer}/.well-known/openid-configuration`).
`GET /console/sign-in/oidc/callback` exchanges the code and has Authlib validate the ID
token against the provider's JWKS (signature, issuer, audience, nonce, expiry). The groups
claim gives roles through the policy (`core/identity/sso.py`), and the session starts through
`begin_session` with `SignInMethod.OIDC`. Every refusal is audited (`auth.login`, denied).

Authlib keeps the handshake (state, nonce, PKCE verifier) in Starlette's signed session
cookie `opsgate_oidc`: limited to the paths above, 10 minutes, signed with a key derived
from the console's secret key, and emptied (so deleted) once the callback has read it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Any

import httpx2
import structlog
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.starlette_client import OAuth
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from joserfc.errors import JoseError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.sessions import SessionMiddleware

from opsgate.core.identity import sso
from opsgate.core.identity.console_sessions import SignInMethod
from opsgate.core.identity.sso import SsoIdentity, SsoRefused
from opsgate.db.models import User
from opsgate.settings import Settings
from opsgate.web.console.auth import ConsoleRoute, begin_session
from opsgate.web.console.rendering import error_page
from opsgate.web.console.state import ConsoleDep
from opsgate.web.deps import OriginDep, ServicesDep
from opsgate.web.security import secret_keys

log = structlog.get_logger("opsgate.console.oidc")

HANDSHAKE_COOKIE = "opsgate_oidc"
HANDSHAKE_PATH = "/console/sign-in/oidc"
HANDSHAKE_SECONDS = 600
_CLIENT = "opsgate"
# What a failed handshake or an unacceptable ID token can raise (Authlib's OAuth and claim
# errors, joserfc's signature and key errors, the provider not answering (Authlib talks
# through httpx2), malformed answers).
_HANDSHAKE_ERRORS = (AuthlibBaseError, JoseError, httpx2.HTTPError, ValueError, KeyError, TypeError)

router = APIRouter(route_class=ConsoleRoute)


@dataclass(frozen=True)
class OidcState:
    issuer: str
    client_id: str
    groups_claim: str
    oauth: Any  # authlib's OAuth registry (untyped)

    @property
    def client(self) -> Any:
        return self.oauth.create_client(_CLIENT)


def build(settings: Settings) -> OidcState | None:
    """The single sign-on client, or None when no issuer is configured."""
    if settings.oidc_issuer is None:
        return None
    assert settings.oidc_client_id is not None and settings.oidc_client_secret is not None
    oauth = OAuth()
    oauth.register(
        name=_CLIENT,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value(),
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid profile email", "code_challenge_method": "S256"},
    )
    return OidcState(
        settings.oidc_issuer, settings.oidc_client_id, settings.oidc_groups_claim, oauth
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Turn single sign-on on when configured: its client, its handshake cookie, its routes.
    With no issuer, `app.state.oidc` is None and the routes answer 404."""
    app.state.oidc = build(settings)
    if app.state.oidc is None:
        return
    # A key of its own, derived from the console's, so that no other signed value of the
    # console can pass for a handshake cookie (or the reverse).
    key = hmac.new(
        secret_keys(settings)[-1].encode(), b"opsgate.console.oidc", hashlib.sha256
    ).hexdigest()
    app.add_middleware(
        SessionMiddleware,
        secret_key=key,
        session_cookie=HANDSHAKE_COOKIE,
        max_age=HANDSHAKE_SECONDS,
        path=HANDSHAKE_PATH,
        same_site="lax",
        https_only=bool(settings.cookie_secure),
    )


def enabled(request: Request) -> bool:
    return getattr(request.app.state, "oidc", None) is not None


def get_oidc(request: Request) -> OidcState:
    state: OidcState | None = getattr(request.app.state, "oidc", None)
    if state is None:
        raise StarletteHTTPException(404, "Single sign-on is not configured.")
    return state


OidcDep = Annotated[OidcState, Depends(get_oidc)]

_UNAVAILABLE = (
    "The single sign-on provider could not be reached or gave an answer opsgate cannot use. "
    "Try again, or sign in with your opsgate password."
)
_NOT_COMPLETED = (
    "Single sign-on did not complete, so you are not signed in. Start again from the sign-in page."
)


@router.get("/sign-in/oidc")
async def start(request: Request, oidc: OidcDep) -> Response:
    redirect_uri = str(request.url_for("oidc_callback"))
    try:
        response: Response = await oidc.client.authorize_redirect(request, redirect_uri)
    except _HANDSHAKE_ERRORS as exc:
        log.warning("oidc_unavailable", error=exc.__class__.__name__, detail=str(exc)[:200])
        return error_page(request, 502, "Single sign-on unavailable", _UNAVAILABLE)
    return response


def _identity(oidc: OidcState, claims: dict[str, Any]) -> SsoIdentity:
    raw_groups = claims.get(oidc.groups_claim)
    if isinstance(raw_groups, str):
        groups: tuple[str, ...] = (raw_groups,)
    elif isinstance(raw_groups, list):
        groups = tuple(g for g in raw_groups if isinstance(g, str))
    else:
        groups = ()
    username = claims.get("preferred_username")
    email = claims.get("email")
    if not isinstance(username, str) or not username:
        username = email.split("@", 1)[0] if isinstance(email, str) else None
    name = claims.get("name")
    return SsoIdentity(
        issuer=oidc.issuer,
        subject=str(claims["sub"]),
        username=username,
        display_name=name if isinstance(name, str) and name.strip() else None,
        groups=groups,
    )


@router.get("/sign-in/oidc/callback", name="oidc_callback")
async def callback(
    request: Request,
    services: ServicesDep,
    console: ConsoleDep,
    origin: OriginDep,
    oidc: OidcDep,
) -> Response:
    now = services.clock.now()

    def refuse(reason: str, message: str, identity: SsoIdentity | None) -> None:
        with services.db.writing() as session:
            sso.audit_refusal(
                session,
                reason,
                message,
                identity=identity,
                origin=origin,
                now=now,
                policy_version=services.policy.version,
            )
            session.commit()

    claims_options = {
        "iss": {"essential": True, "values": [oidc.issuer]},
        "aud": {"essential": True, "values": [oidc.client_id]},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "nonce": {"essential": True},
    }
    try:
        token = await oidc.client.authorize_access_token(
            request, claims_options=claims_options, leeway=60
        )
        claims = token.get("userinfo")
        if not claims:
            raise ValueError("the token response has no ID token")
        identity = _identity(oidc, dict(claims))
    except _HANDSHAKE_ERRORS as exc:
        log.warning("oidc_refused", error=exc.__class__.__name__, detail=str(exc)[:200])
        await run_in_threadpool(refuse, "oidc_invalid", _NOT_COMPLETED, None)
        return error_page(request, 401, "Not signed in", _NOT_COMPLETED)

    def provision() -> User:
        with services.db.writing() as session:
            user = sso.provision(session, identity, services.policy, origin=origin, now=now)
            session.commit()
            return user

    try:
        user = await run_in_threadpool(provision)
    except SsoRefused as exc:
        await run_in_threadpool(refuse, exc.reason, exc.message, identity)
        return error_page(request, 403, "Not signed in", exc.message)
    redirect = RedirectResponse("/console", status_code=303)
    await run_in_threadpool(
        begin_session, request, redirect, services, console, user, SignInMethod.OIDC
    )
    return redirect
