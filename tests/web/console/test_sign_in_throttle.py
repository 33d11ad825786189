"""Attacks on the sign-in throttle: many parallel guesses, and what the trail keeps of them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from opsgate.core.identity import passwords
from opsgate.db.models import AuditRecord, LoginFailure
from opsgate.web.services import Services
from tests.conftest import World
from tests.web.console.conftest import PASSWORD, Browser, audit_rows

GUESSES = 100


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every Argon2 verification the server runs, by the hash it checked against."""
    checked: list[str] = []
    lock = threading.Lock()
    real = passwords.verify_password

    def counting(password_hash: str, password: str) -> bool:
        with lock:
            checked.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(passwords, "verify_password", counting)
    return checked


def _guess_in_parallel(b: Browser, usernames: list[str]) -> list[int]:
    token = b.csrf()  # one pre-session cookie and token, shared by every guess

    def guess(username: str) -> int:
        response = b.client.post(
            "/console/login",
            data={"username": username, "password": "a wrong guess", "csrf_token": token},
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=50) as pool:
        return list(pool.map(guess, usernames))


def test_parallel_wrong_passwords_for_one_username_are_checked_at_most_the_limit(
    browser: Callable[..., Browser],
    set_password: Callable[[str, str], None],
    verifications: list[str],
    services: Services,
) -> None:
    set_password("alice", PASSWORD)
    statuses = _guess_in_parallel(browser(), ["alice"] * GUESSES)
    assert len(verifications) <= 5, f"{len(verifications)} of {GUESSES} guesses were checked"
    assert statuses.count(401) == len(verifications)
    assert statuses.count(429) == GUESSES - len(verifications)
    checked = audit_rows(services, action="auth.login", error_code="bad_credentials")
    assert len(checked) == len(verifications)


def test_parallel_guesses_at_many_usernames_from_one_address_are_checked_at_most_the_limit(
    browser: Callable[..., Browser], verifications: list[str]
) -> None:
    statuses = _guess_in_parallel(browser(), [f"nobody{n}" for n in range(GUESSES)])
    assert len(verifications) <= 5, f"{len(verifications)} of {GUESSES} guesses were checked"
    assert statuses.count(429) == GUESSES - len(verifications)


def test_an_unknown_username_is_kept_only_as_a_keyed_hash(
    browser: Callable[..., Browser], services: Services
) -> None:
    typed = "Hunter2-typed-into-the-username-field"
    b = browser()
    assert b.sign_in(typed, "whatever it was").status_code == 401
    for _ in range(5):
        b.sign_in(typed, "whatever it was")  # up to the lock, and past it
    needle = typed.lower()
    with services.db.reading() as session:
        for row in session.scalars(select(AuditRecord)):
            text = " ".join(str(value) for value in row.__dict__.values()).lower()
            assert needle not in text, f"{row.action} {row.error_code} keeps the typed username"
        kept = [f.username for f in session.scalars(select(LoginFailure))]
    assert kept and all(needle not in name for name in kept)
    [first, *_] = audit_rows(services, action="auth.login", result="denied")
    assert first.parameters is not None
    assert first.parameters["username_known"] is False
    assert len(first.parameters["username_hmac"]) == 64
    assert set(first.parameters) == {"username_known", "username_hmac"}  # not even a length


def test_the_same_unknown_username_hashes_the_same_every_time(
    browser: Callable[..., Browser], services: Services
) -> None:
    b = browser()
    for n in range(2):
        b.client.headers["user-agent"] = f"agent {n}"
        b.sign_in("not-a-user", "guess")
    one, two = audit_rows(services, action="auth.login", result="denied")
    assert one.parameters is not None and two.parameters is not None
    assert one.parameters["username_hmac"] == two.parameters["username_hmac"]


def test_a_known_username_is_still_recorded_as_that_user(
    browser: Callable[..., Browser],
    set_password: Callable[[str, str], None],
    services: Services,
    world: World,
) -> None:
    set_password("alice", PASSWORD)
    assert browser().sign_in("alice", "not the password").status_code == 401
    [denied] = audit_rows(services, action="auth.login", result="denied")
    assert denied.parameters == {"username": "alice"}
    assert denied.target == f"user:{world.user_ids['alice']}"
