"""Signing in and out: Argon2id passwords, timing-safe refusals, throttling, all audited."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from opsgate.core.clock import FrozenClock
from opsgate.core.identity import passwords
from opsgate.web.services import Services
from tests.conftest import World
from tests.web.console.conftest import PASSWORD, Browser, audit_rows


def test_sign_in_starts_a_session_in_a_safe_cookie_and_audits_it(
    browser: Callable[..., Browser],
    set_password: Callable[[str, str], None],
    services: Services,
    world: World,
) -> None:
    set_password("alice", PASSWORD)
    b = browser()
    page = b.get("/console/customers/" + world.customer())
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/login?next=%2Fconsole%2Fcustomers%2F")
    next_path = f"/console/customers/{world.customer()}"
    response = b.post(
        "/console/login", {"username": "alice", "password": PASSWORD, "next": next_path}
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/customers/{world.customer()}"
    cookie = response.headers["set-cookie"]
    assert "opsgate_session=" in cookie
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    assert "Path=/console" in cookie
    assert "Secure" not in cookie  # plain HTTP here; HTTPS gets Secure
    assert b.get("/console").status_code == 200
    [login] = audit_rows(services, action="auth.login", result="succeeded")
    assert login.actor_id == world.user_ids["alice"]
    assert login.credential_id is not None and login.credential_id.startswith("ses_")
    assert login.outcome is not None and login.outcome["session_id"] == login.credential_id


def test_cookie_is_secure_over_https(
    browser: Callable[..., Browser], set_password: Callable[[str, str], None]
) -> None:
    set_password("alice", PASSWORD)
    b = browser()
    b.client.base_url = b.client.base_url.copy_with(scheme="https")
    response = b.sign_in("alice")
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


def test_wrong_password_is_refused_plainly_and_audited(
    browser: Callable[..., Browser],
    set_password: Callable[[str, str], None],
    services: Services,
) -> None:
    set_password("alice", PASSWORD)
    b = browser()
    response = b.sign_in("alice", "not the password at all")
    assert response.status_code == 401
    assert "The username or password is not right." in response.text
    assert "opsgate_session" not in response.headers.get("set-cookie", "")
    [denied] = audit_rows(services, action="auth.login", result="denied")
    assert denied.error_code == "bad_credentials"
    assert denied.actor_id is None
    assert denied.parameters == {"username": "alice"}
    assert b.get("/console").status_code == 303


def test_unknown_user_is_checked_against_the_dummy_hash(
    browser: Callable[..., Browser], monkeypatch: pytest.MonkeyPatch, services: Services
) -> None:
    calls: list[str] = []
    real = passwords.verify_password

    def spy(password_hash: str, password: str) -> bool:
        calls.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "verify_password", spy)
    response = browser().sign_in("nobody-here", PASSWORD)
    assert response.status_code == 401
    assert "The username or password is not right." in response.text  # same words as a bad password
    assert calls == [passwords.dummy_hash()]
    [denied] = audit_rows(services, action="auth.login", result="denied")
    assert denied.parameters is not None and denied.parameters["username_known"] is False
    assert "nobody-here" not in str(denied.parameters)  # kept only as a keyed hash


def test_a_user_without_a_password_takes_the_dummy_path_too(
    browser: Callable[..., Browser], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(passwords, "verify_password", lambda h, p: calls.append(h) or False)
    assert browser().sign_in("bob", PASSWORD).status_code == 401  # bob has no password
    assert calls == [passwords.dummy_hash()]


def test_deactivated_user_cannot_sign_in(
    browser: Callable[..., Browser],
    set_password: Callable[[str, str], None],
    services: Services,
) -> None:
    from opsgate.core.identity.users import find_user

    set_password("alice", PASSWORD)
    with services.db.writing() as session:
        user = find_user(session, "alice")
        assert user is not None
        user.is_active = False
        session.commit()
    assert browser().sign_in("alice").status_code == 401


def test_five_failures_lock_the_username_for_the_window_and_every_step_is_audited(
    browser: Callable[..., Browser],
    set_password: Callable[[str, str], None],
    services: Services,
    clock: FrozenClock,
) -> None:
    set_password("alice", PASSWORD)
    b = browser()
    for _ in range(5):
        assert b.sign_in("alice", "wrong password, again").status_code == 401
    locked = b.sign_in("alice", PASSWORD)  # even the right password
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.text
    codes = [r.error_code for r in audit_rows(services, action="auth.login", result="denied")]
    assert codes == ["bad_credentials"] * 5 + ["locked", "throttled"]
    clock.advance(timedelta(minutes=15, seconds=1))
    assert b.sign_in("alice").status_code == 303


def test_failures_from_one_address_lock_it_for_every_username(
    browser: Callable[..., Browser], set_password: Callable[[str, str], None]
) -> None:
    set_password("olga", PASSWORD)
    b = browser()
    for name in ("nobody1", "nobody2", "nobody3", "nobody4", "nobody5"):
        assert b.sign_in(name, "guess guess guess").status_code == 401
    assert b.sign_in("olga").status_code == 429  # the test client's address is locked


def test_success_clears_the_username_failures(
    browser: Callable[..., Browser], set_password: Callable[[str, str], None]
) -> None:
    set_password("alice", PASSWORD)
    b = browser()
    for _ in range(3):
        b.sign_in("alice", "wrong password, again")
    assert b.sign_in("alice").status_code == 303
    other = browser()
    for _ in range(4):
        other.sign_in("alice", "wrong password, again")
    # 3 earlier failures were forgotten, so 4 new ones do not lock alice out.
    assert other.sign_in("alice").status_code == 303


def test_sign_out_ends_the_session_on_the_server(
    browser: Callable[..., Browser], services: Services
) -> None:
    b = browser("alice")
    cookie = b.client.cookies.get("opsgate_session")
    response = b.post("/console/logout")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?m=signed_out"
    assert audit_rows(services, action="auth.logout", result="succeeded")
    # A copy of the old cookie is worth nothing now.
    stolen = browser()
    stolen.client.cookies.set("opsgate_session", str(cookie), path="/console")
    again = stolen.get("/console")
    assert again.status_code == 303
    assert again.headers["location"] == "/console/login?next=%2Fconsole&m=ended"
    assert audit_rows(services, action="auth.session", error_code="ended")


def test_next_never_leaves_the_console(
    browser: Callable[..., Browser], set_password: Callable[[str, str], None]
) -> None:
    set_password("alice", PASSWORD)
    for evil in ("https://evil.example/", "//evil.example/console", "/console/../api", "/api/v1"):
        b = browser()
        response = b.post(
            "/console/login", {"username": "alice", "password": PASSWORD, "next": evil}
        )
        assert response.headers["location"] == "/console", evil


def test_root_redirects_to_the_console(browser: Callable[..., Browser]) -> None:
    response = browser().get("/")
    assert response.status_code == 307
    assert response.headers["location"] == "/console"
