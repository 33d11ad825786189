"""My API tokens page: a person creates (shown once), lists and revokes their own tokens."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.core.clock import FrozenClock
from opsgate.core.identity import tokens
from opsgate.core.identity.users import find_user
from opsgate.db.models import ApiToken
from opsgate.settings import Settings
from opsgate.web.services import Services
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import TestDatabase, World
from tests.web.console.conftest import PASSWORD, Browser, audit_rows, csrf_of

_SECRET = re.compile(r"ogt_[A-Za-z0-9_-]{40,}")


@pytest.fixture
def settings(test_db: TestDatabase) -> Settings:
    return Settings(database_url=test_db.url, policy=DEMO_POLICY, self_service_tokens=True)


def create(b: Browser, name: str = "laptop script", days: str = "7", **extra: str) -> str:
    page = b.get("/console/tokens")
    response = b.post(
        "/console/tokens",
        {"name": name, "expires_in_days": days, "csrf_token": csrf_of(page.text)} | extra,
    )
    return response.text if response.status_code == 200 else f"{response.status_code}"


def test_a_signed_in_person_creates_a_token_that_is_shown_once_and_proves_them(
    browser: Callable[..., Browser], client: TestClient, services: Services, world: World
) -> None:
    b = browser("alice")
    page = b.post(
        "/console/tokens",
        {"name": "laptop script", "expires_in_days": "7", "csrf_token": b.csrf()},
    )
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    [secret] = set(_SECRET.findall(page.text))
    assert (
        client.get("/api/v1/actions", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 200
    )
    with services.db.reading() as session:
        actor = tokens.authenticate(session, secret, now=services.clock.now()).actor
    assert actor.id == world.user_ids["alice"]
    again = b.get("/console/tokens")
    assert secret not in again.text and "laptop script" in again.text
    assert "created by you in the console" in again.text
    [audit] = audit_rows(services, action="token.create")
    assert audit.actor_id == world.user_ids["alice"]
    assert audit.parameters is not None and audit.parameters["created_via"] == "console"


def test_a_token_the_cli_made_for_me_says_where_and_by_whom(
    browser: Callable[..., Browser], services: Services
) -> None:
    with services.db.writing() as session:
        user = find_user(session, "alice")
        assert user is not None
        minter = tokens.Minter(tokens.TokenSource.CLI, os_user="mallory", host="jump-host-2")
        tokens.issue_token(
            session,
            user,
            name="cli",
            now=services.clock.now(),
            ttl=timedelta(days=1),
            minter=minter,
        )
        session.commit()
    page = browser("alice").get("/console/tokens")
    assert "created by CLI on host jump-host-2 by OS user mallory" in page.text


def test_revoking_my_token_stops_it_and_is_audited(
    browser: Callable[..., Browser], client: TestClient, services: Services
) -> None:
    b = browser("alice")
    [secret] = set(_SECRET.findall(create(b)))
    with services.db.reading() as session:
        token_id = tokens.authenticate(
            session, secret, now=services.clock.now()
        ).actor.credential_id
    revoked = b.post(f"/console/tokens/{token_id}/revoke")
    assert revoked.status_code == 303
    assert (
        client.get("/api/v1/actions", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 401
    )
    assert audit_rows(services, action="token.revoke", result="succeeded")


def test_nobody_revokes_another_persons_token(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    with services.db.reading() as session:
        ritas = session.scalars(
            select(ApiToken).where(ApiToken.user_id == world.user_ids["rita"])
        ).first()
    assert ritas is not None
    answer = browser("alice").post(f"/console/tokens/{ritas.id}/revoke")
    assert answer.status_code == 404
    with services.db.reading() as session:
        row = session.get(ApiToken, ritas.id)
        assert row is not None and row.revoked_at is None


def test_creating_a_token_needs_the_forms_csrf_token(
    browser: Callable[..., Browser], services: Services
) -> None:
    answer = browser("alice").post(
        "/console/tokens", {"name": "x", "expires_in_days": "7"}, csrf=False
    )
    assert answer.status_code == 403
    assert audit_rows(services, action="token.create") == []


def test_a_stale_sign_in_must_confirm_the_password_first(
    browser: Callable[..., Browser], services: Services, clock: FrozenClock
) -> None:
    b = browser("alice")
    clock.advance(timedelta(minutes=16))
    b.get("/console")  # keep the session from idling out
    assert create(b) == "403"
    assert audit_rows(services, action="token.create") == []
    assert _SECRET.search(create(b, password=PASSWORD))


def test_with_self_service_off_the_console_creates_no_token(
    browser: Callable[..., Browser], services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services.settings, "self_service_tokens", False)
    b = browser("alice")
    assert "Self-service tokens are off" in b.get("/console/tokens").text
    assert create(b) == "422"
    assert audit_rows(services, action="token.create") == []


def test_a_service_account_cannot_sign_in_even_with_a_password(
    browser: Callable[..., Browser], set_password: Callable[[str, str], None]
) -> None:
    set_password("prom", PASSWORD)
    assert browser().sign_in("prom").status_code == 401


def test_a_stale_single_sign_on_session_must_sign_in_again_first(
    browser: Callable[..., Browser], services: Services, clock: FrozenClock
) -> None:
    from opsgate.core.identity import console_sessions
    from opsgate.core.identity.actors import Origin
    from opsgate.core.identity.console_sessions import SessionRules, SignInMethod
    from opsgate.web.security import Signing

    with services.db.writing() as session:
        user = find_user(session, "olga")  # no opsgate password: single sign-on only
        assert user is not None
        issued = console_sessions.start_session(
            session,
            user,
            method=SignInMethod.OIDC,
            origin=Origin("sso-callback"),
            now=clock.now(),
            rules=SessionRules(),
            policy_version=services.policy.version,
        )
        session.commit()
    b = browser()
    signing: Signing = b.client.app.state.console.signing  # type: ignore[attr-defined]
    b.client.cookies.set(
        "opsgate_session", signing.session_cookie(issued.id, issued.secret), path="/console"
    )
    assert _SECRET.search(create(b))  # fresh: no step-up
    clock.advance(timedelta(minutes=16))
    b.get("/console")
    assert create(b) == "403"
    [refused] = audit_rows(services, action="auth.reauth", error_code="no_password")
    assert refused.actor_id == user.id
