"""Console sessions: server-side revocation, idle and absolute timeouts, the single sign-on
entry point, key rotation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from opsgate.core.clock import FrozenClock
from opsgate.core.identity import console_sessions
from opsgate.core.identity.actors import Origin
from opsgate.core.identity.console_sessions import SessionEnd, SessionRules, SignInMethod
from opsgate.core.identity.users import find_user
from opsgate.web.security import Signing
from opsgate.web.services import Services
from tests.conftest import World
from tests.web.console.conftest import Browser, audit_rows


def test_revoking_a_users_sessions_signs_them_out_at_once(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    b = browser("alice")
    assert b.get("/console").status_code == 200
    with services.db.writing() as session:
        ended = console_sessions.end_user_sessions(
            session, world.user_ids["alice"], SessionEnd.REVOKED, now=services.clock.now()
        )
        session.commit()
    assert ended == 1
    response = b.get("/console")
    assert response.status_code == 303
    assert "m=ended" in response.headers["location"]
    [refused] = audit_rows(services, action="auth.session")
    assert refused.result == "denied"
    assert refused.actor_id == world.user_ids["alice"]


def test_idle_timeout_counts_from_the_last_request(
    browser: Callable[..., Browser], services: Services, clock: FrozenClock
) -> None:
    b = browser("alice")
    clock.advance(timedelta(minutes=29))
    assert b.get("/console").status_code == 200  # activity moves the idle deadline
    clock.advance(timedelta(minutes=29))
    assert b.get("/console").status_code == 200
    clock.advance(timedelta(minutes=30))
    response = b.get("/console")
    assert response.status_code == 303
    assert "m=idle_timeout" in response.headers["location"]
    [refused] = audit_rows(services, action="auth.session")
    assert refused.error_code == "idle_timeout"
    # The session is ended on the server: coming back changes nothing.
    clock.advance(timedelta(seconds=1))
    assert b.get("/console").status_code == 303


def test_absolute_timeout_ends_even_a_busy_session(
    browser: Callable[..., Browser], services: Services, clock: FrozenClock
) -> None:
    b = browser("alice")
    for _ in range(35):  # 35 x 20 min = 11 h 40 min of steady work
        clock.advance(timedelta(minutes=20))
        assert b.get("/console").status_code == 200
    clock.advance(timedelta(minutes=20))
    response = b.get("/console")
    assert response.status_code == 303
    assert "m=absolute_timeout" in response.headers["location"]
    assert audit_rows(services, action="auth.session", error_code="absolute_timeout")


def test_a_forged_cookie_is_refused_and_audited(
    browser: Callable[..., Browser], services: Services
) -> None:
    b = browser()
    b.client.cookies.set("opsgate_session", "forged.value", path="/console")
    response = b.get("/console")
    assert response.status_code == 303
    assert audit_rows(services, action="auth.session", error_code="forged")


def test_a_right_id_with_a_wrong_secret_is_refused(
    browser: Callable[..., Browser], client: object, services: Services
) -> None:
    b = browser("alice")
    signing: Signing = b.client.app.state.console.signing  # type: ignore[attr-defined]
    parsed = signing.read_session_cookie(b.client.cookies.get("opsgate_session"))
    assert parsed is not None
    guessed = signing.session_cookie(parsed[0], "not-the-secret")
    intruder = browser()
    intruder.client.cookies.set("opsgate_session", guessed, path="/console")
    assert intruder.get("/console").status_code == 303
    assert audit_rows(services, action="auth.session", error_code="unknown")


def test_start_session_is_the_entry_point_for_single_sign_on(
    browser: Callable[..., Browser], services: Services, world: World
) -> None:
    """What an OIDC callback does: find the user, start_session, set the signed cookie."""
    with services.db.writing() as session:
        user = find_user(session, "olga")
        assert user is not None
        issued = console_sessions.start_session(
            session,
            user,
            method=SignInMethod.OIDC,
            origin=Origin("sso-callback"),
            now=services.clock.now(),
            rules=SessionRules(),
            policy_version=services.policy.version,
        )
        session.commit()
    b = browser()
    signing: Signing = b.client.app.state.console.signing  # type: ignore[attr-defined]
    b.client.cookies.set(
        "opsgate_session", signing.session_cookie(issued.id, issued.secret), path="/console"
    )
    page = b.get("/console")
    assert page.status_code == 200
    assert "Olga Lindqvist" in page.text
    [login] = audit_rows(services, action="auth.login", request_id="sso-callback")
    assert login.parameters == {"method": "oidc"}
    assert login.credential_id == issued.id


def test_cookies_signed_with_the_previous_key_survive_a_rotation() -> None:
    old, new = "o" * 40, "n" * 40
    cookie = Signing([old]).session_cookie("ses_x", "secret")
    token = Signing([old]).csrf_token("s:ses_x")
    rotated = Signing([old, new])
    assert rotated.read_session_cookie(cookie) == ("ses_x", "secret")
    assert rotated.csrf_valid(token, "s:ses_x")
    assert Signing([new]).read_session_cookie(cookie) is None
    assert rotated.session_cookie("ses_x", "secret") == Signing([new]).session_cookie(
        "ses_x", "secret"
    )
