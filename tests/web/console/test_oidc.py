"""Single sign-on against a small OpenID Connect provider this module runs itself (uvicorn in
a thread on 127.0.0.1): discovery, JWKS, an authorize endpoint that consents at once, and a
token endpoint that checks PKCE and signs RS256 ID tokens with the nonce it was given."""

from __future__ import annotations

import base64
import hashlib
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
import uvicorn
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from opsgate.core.actions.policy import PolicyError, parse_policy
from opsgate.core.identity.users import find_user
from opsgate.db.models import UserIdentity
from opsgate.settings import Settings
from opsgate.web.app import create_app
from opsgate.web.services import Services
from tests.conftest import TestDatabase, demo_policy_with
from tests.registries import build_registry
from tests.web.console.conftest import Browser, audit_rows

CLIENT_ID = "opsgate-console"
CLIENT_SECRET = "test-client-secret"
GROUP_ROLES = """
[identity_provider]
group_roles = { "ops-team" = ["ops_lead"], "support" = ["support_agent"], "audit" = ["auditor"] }
"""


@dataclass
class Provider:
    """The provider's state: who is signed in there, and how it misbehaves."""

    issuer: str = ""
    key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048, parameters={"kid": "k1"}))
    user: dict[str, Any] = field(default_factory=dict)
    forge: str | None = None  # "wrong_key", "wrong_nonce", "wrong_audience", "expired"
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def reset(self) -> None:
        self.user = {}
        self.forge = None
        self.codes.clear()

    def app(self) -> Starlette:
        async def discovery(request: Request) -> Response:
            return JSONResponse(
                {
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{self.issuer}/authorize",
                    "token_endpoint": f"{self.issuer}/token",
                    "jwks_uri": f"{self.issuer}/jwks",
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "code_challenge_methods_supported": ["S256"],
                }
            )

        async def jwks(request: Request) -> Response:
            return JSONResponse({"keys": [self.key.as_dict(private=False)]})

        async def authorize(request: Request) -> Response:
            q = request.query_params
            assert q["client_id"] == CLIENT_ID
            assert q["response_type"] == "code"
            assert "openid" in q["scope"].split()
            assert q["code_challenge_method"] == "S256"
            code = secrets.token_urlsafe(16)
            self.codes[code] = {
                "nonce": q["nonce"],
                "challenge": q["code_challenge"],
                "redirect_uri": q["redirect_uri"],
                "user": dict(self.user),
            }
            query = urlencode({"code": code, "state": q["state"]})
            return RedirectResponse(f"{q['redirect_uri']}?{query}", status_code=302)

        async def token(request: Request) -> Response:
            form = await request.form()
            basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {basic}":
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            grant = self.codes.pop(str(form.get("code")), None)
            if grant is None or form.get("redirect_uri") != grant["redirect_uri"]:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            verifier = str(form.get("code_verifier"))
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            if challenge.rstrip(b"=").decode() != grant["challenge"]:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            now = int(time.time())
            claims = {
                "iss": self.issuer,
                "sub": grant["user"]["sub"],
                "aud": "someone-else" if self.forge == "wrong_audience" else CLIENT_ID,
                "iat": now,
                "exp": now - 600 if self.forge == "expired" else now + 300,
                "nonce": "not-the-nonce" if self.forge == "wrong_nonce" else grant["nonce"],
                **{k: v for k, v in grant["user"].items() if k != "sub"},
            }
            key = self.key
            if self.forge == "wrong_key":
                key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
            id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
            return JSONResponse(
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": id_token,
                }
            )

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/jwks", jwks),
                Route("/authorize", authorize),
                Route("/token", token, methods=["POST"]),
            ]
        )


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    idp = Provider()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    idp.issuer = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(idp.app(), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test identity provider did not start"
        time.sleep(0.02)
    yield idp
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def idp(provider: Provider) -> Provider:
    provider.reset()
    return provider


@pytest.fixture
def settings(test_db: TestDatabase, tmp_path: Path, provider: Provider) -> Settings:
    policy = tmp_path / "policy.toml"
    policy.write_text(demo_policy_with({}) + GROUP_ROLES, encoding="utf-8")
    return Settings(
        database_url=test_db.url,
        policy=policy,
        secret_key="k" * 40,
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
    )


@pytest.fixture
def b(client: Any) -> Browser:
    return Browser(client.app)


def sso_sign_in(b: Browser, idp: Provider, **user: Any) -> httpx.Response:
    """Go through the whole dance: console → provider → console callback."""
    idp.user = user
    start = b.get("/console/sign-in/oidc")
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(f"{idp.issuer}/authorize?")
    assert "opsgate_oidc=" in start.headers["set-cookie"]
    assert "path=/console/sign-in/oidc;" in start.headers["set-cookie"].lower()
    back = httpx.get(location, follow_redirects=False)
    assert back.status_code == 302
    callback = urlsplit(back.headers["location"])
    assert callback.path == "/console/sign-in/oidc/callback"
    return b.get(f"{callback.path}?{callback.query}")


def roles_of(services: Services, username: str) -> set[str]:
    with services.db.reading() as session:
        user = find_user(session, username)
        assert user is not None
        return set(user.role_names())


def test_the_login_page_offers_sso_only_when_configured(
    b: Browser, settings: Settings, services: Services
) -> None:
    page = b.get("/console/login")
    assert 'href="/console/sign-in/oidc"' in page.text
    assert "Sign in with SSO" in page.text
    off = settings.model_copy(update={"oidc_issuer": None})
    plain = Browser(create_app(off, services, configure_logs=False))
    assert "Sign in with SSO" not in plain.get("/console/login").text
    assert plain.get("/console/sign-in/oidc").status_code == 404


def test_a_person_in_a_mapped_group_signs_in_and_is_provisioned(
    b: Browser, idp: Provider, services: Services
) -> None:
    response = sso_sign_in(
        b, idp, sub="u-1001", preferred_username="Dana", name="Dana Ops", groups=["ops-team"]
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/console"
    assert "opsgate_session=" in response.headers["set-cookie"]
    home = b.get("/console")
    assert home.status_code == 200
    assert "Dana Ops" in home.text
    assert roles_of(services, "dana") == {"ops_lead"}
    with services.db.reading() as session:
        [link] = session.scalars(select(UserIdentity)).all()
        assert (link.issuer, link.subject) == (idp.issuer, "u-1001")
    [login] = audit_rows(services, action="auth.login", result="succeeded")
    assert login.parameters == {"method": "oidc"}
    assert login.actor_id == link.user_id
    assert login.credential_id is not None and login.credential_id.startswith("ses_")
    [created] = audit_rows(services, action="user.create")
    assert created.target == f"user:{link.user_id}"
    [granted] = audit_rows(services, action="user.set_roles")
    assert granted.before == {"roles": []}
    assert granted.after == {"roles": ["ops_lead"]}


def test_groups_changed_at_the_provider_change_roles_at_the_next_sign_in(
    b: Browser, idp: Provider, services: Services
) -> None:
    who = {"sub": "u-2002", "preferred_username": "erin", "name": "Erin"}
    assert sso_sign_in(b, idp, **who, groups=["support"]).status_code == 303
    assert roles_of(services, "erin") == {"support_agent"}
    again = Browser(b.client.app)  # type: ignore[arg-type]
    assert sso_sign_in(again, idp, **who, groups=["audit", "unmapped"]).status_code == 303
    assert roles_of(services, "erin") == {"auditor"}
    changes = audit_rows(services, action="user.set_roles")
    assert [c.after for c in changes] == [{"roles": ["support_agent"]}, {"roles": ["auditor"]}]
    assert changes[1].before == {"roles": ["support_agent"]}
    # The same subject is the same user: one link, one user.
    assert len(audit_rows(services, action="user.create")) == 1
    # Unchanged groups: no role change is recorded.
    third = Browser(b.client.app)  # type: ignore[arg-type]
    assert sso_sign_in(third, idp, **who, groups=["audit"]).status_code == 303
    assert len(audit_rows(services, action="user.set_roles")) == 2


def test_a_person_whose_groups_give_no_role_is_refused_and_audited(
    b: Browser, idp: Provider, services: Services
) -> None:
    response = sso_sign_in(b, idp, sub="u-3003", preferred_username="frank", groups=["marketing"])
    assert response.status_code == 403
    assert "Your groups give you no role in opsgate" in response.text
    assert "opsgate_session=" not in response.headers.get("set-cookie", "")
    assert b.get("/console").status_code == 303
    [denied] = audit_rows(services, action="auth.login", result="denied")
    assert denied.error_code == "no_role"
    assert denied.parameters == {
        "method": "oidc",
        "issuer": idp.issuer,
        "subject": "u-3003",
        "groups": ["marketing"],
    }
    with services.db.reading() as session:
        assert find_user(session, "frank") is None


FORGED_REFUSAL = {
    "wrong_key": "BadSignatureError",
    "wrong_nonce": "InvalidClaimError",
    "wrong_audience": "InvalidClaimError",
    "expired": "ExpiredTokenError",
}


@pytest.mark.parametrize("forge", sorted(FORGED_REFUSAL))
def test_a_forged_or_misdirected_id_token_is_refused(
    b: Browser, idp: Provider, services: Services, forge: str, logs: Any
) -> None:
    idp.forge = forge
    response = sso_sign_in(b, idp, sub="u-4004", preferred_username="gus", groups=["ops-team"])
    assert response.status_code == 401
    assert "Single sign-on did not complete" in response.text
    assert "opsgate_session=" not in response.headers.get("set-cookie", "")
    [denied] = audit_rows(services, action="auth.login", result="denied")
    assert denied.error_code == "oidc_invalid"
    with services.db.reading() as session:
        assert find_user(session, "gus") is None
    [refused] = [line for line in logs() if line["event"] == "oidc_refused"]
    # Refused for the reason forged, not by accident.
    assert refused["error"] == FORGED_REFUSAL[forge], refused
    if forge in ("wrong_nonce", "wrong_audience"):
        assert forge.removeprefix("wrong_").replace("audience", "aud") in refused["detail"]


def test_a_callback_without_the_handshake_cookie_is_refused(
    b: Browser, idp: Provider, services: Services
) -> None:
    idp.user = {"sub": "u-5005", "preferred_username": "hana", "groups": ["ops-team"]}
    start = b.get("/console/sign-in/oidc")
    back = httpx.get(start.headers["location"], follow_redirects=False)
    callback = urlsplit(back.headers["location"])
    other = Browser(b.client.app)  # type: ignore[arg-type]  # another browser: no state
    response = other.get(f"{callback.path}?{callback.query}")
    assert response.status_code == 401
    [denied] = audit_rows(services, action="auth.login", result="denied")
    assert denied.error_code == "oidc_invalid"


def test_an_unknown_role_in_group_roles_stops_the_policy() -> None:
    text = demo_policy_with({}) + '[identity_provider]\ngroup_roles = { "ops" = ["wizard"] }\n'
    with pytest.raises(PolicyError) as raised:
        parse_policy(text, build_registry())
    assert raised.value.problems == ["identity_provider.group_roles.ops: unknown role 'wizard'"]


def test_group_roles_map_groups_and_change_the_policy_version() -> None:
    registry = build_registry()
    plain = parse_policy(demo_policy_with({}), registry)
    mapped = parse_policy(demo_policy_with({}) + GROUP_ROLES, registry)
    assert mapped.version != plain.version
    assert mapped.roles_for_groups(["support", "ops-team", "nobody"]) == {
        "support_agent",
        "ops_lead",
    }
    assert mapped.roles_for_groups([]) == frozenset()
    assert plain.roles_for_groups(["support"]) == frozenset()
    unknown_key = demo_policy_with({}) + "[identity_provider]\nroles = {}\n"
    with pytest.raises(PolicyError, match=r"identity_provider\.roles: unknown key"):
        parse_policy(unknown_key, registry)


def test_settings_need_the_client_credentials_with_an_issuer() -> None:
    with pytest.raises(ValueError, match="OPSGATE_OIDC_CLIENT_ID"):
        Settings(oidc_issuer="http://127.0.0.1:1")


def test_an_unreachable_provider_is_said_plainly(settings: Settings, services: Services) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    down = settings.model_copy(update={"oidc_issuer": closed})
    b = Browser(create_app(down, services, configure_logs=False))
    response = b.get("/console/sign-in/oidc")
    assert response.status_code == 502
    assert "could not be reached" in response.text


def test_roles_changed_at_sign_in_make_a_pending_role_change_about_them_stale(
    b: Browser, idp: Provider, services: Services, world: Any
) -> None:
    from opsgate.core.errors import StaleApproval
    from opsgate.core.identity.actors import Actor, Origin

    who = {"sub": "u-4004", "preferred_username": "gina", "name": "Gina"}
    assert sso_sign_in(b, idp, **who, groups=["support"]).status_code == 303
    with services.db.reading() as session:
        gina = find_user(session, "gina")
        assert gina is not None
        gina_id = gina.id
    adam = Actor(id=world.user_ids["adam"], name="Adam", roles=frozenset({"admin"}))
    ada = Actor(id=world.user_ids["ada"], name="Ada", roles=frozenset({"admin"}))
    held = services.gateway.submit(
        adam,
        "admin.assign_role",
        {
            "target": f"user:{gina_id}",
            "payload": {"role": "risk_reviewer", "operation": "grant"},
            "reason": "covers the fraud queue",
        },
        Origin("grant-gina"),
    )
    assert held.status == "pending_approval"
    # Her groups change at the provider before anyone approves: the request was made about a
    # support agent, and she is now an auditor. Approving it must not stack a role on that.
    again = Browser(b.client.app)  # type: ignore[arg-type]
    assert sso_sign_in(again, idp, **who, groups=["audit"]).status_code == 303
    [synced] = [r for r in audit_rows(services, action="user.set_roles")][-1:]
    assert (synced.before, synced.after) == ({"roles": ["support_agent"]}, {"roles": ["auditor"]})
    assert synced.target == f"user:{gina_id}"
    assert synced.parameters == {"source": "oidc", "groups": ["audit"]}
    with pytest.raises(StaleApproval):
        services.approvals.decide(held.approval_id or "", ada, "approve", "ok", Origin("ok"))
    assert roles_of(services, "gina") == {"auditor"}
