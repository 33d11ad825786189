"""Console fixtures: browsers (TestClients with their own cookies) signed in as demo users."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from argon2 import PasswordHasher
from argon2.profiles import CHEAPEST
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsgate.core.identity import passwords
from opsgate.core.identity.users import find_user
from opsgate.db.models import AuditRecord
from opsgate.web.services import Services

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_KEY = re.compile(r'name="idempotency_key" value="([^"]+)"')


@pytest.fixture(autouse=True)
def cheap_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id with the cheapest parameters: the same code paths, a fraction of the time."""
    monkeypatch.setattr(passwords, "HASHER", PasswordHasher.from_parameters(CHEAPEST))


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def key_of(html: str) -> str:
    match = _KEY.search(html)
    assert match, "no idempotency key on the page"
    return match.group(1)


class Browser:
    """One browser: its own cookie jar, against the test app."""

    def __init__(self, app: FastAPI) -> None:
        self.client = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
        self.last: httpx.Response | None = None

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        self.last = self.client.get(path, **kwargs)
        return self.last

    def csrf(self) -> str:
        page = self.get("/console/login")
        if page.status_code == 303:  # signed in: any console page carries the token
            page = self.get("/console")
        return csrf_of(page.text)

    def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        csrf: bool = True,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        form = dict(data or {})
        if csrf and "csrf_token" not in form:
            form["csrf_token"] = self.csrf()
        self.last = self.client.post(path, data=form, headers=headers)
        return self.last

    def sign_in(self, username: str, password: str = PASSWORD) -> httpx.Response:
        return self.post("/console/login", {"username": username, "password": password})


@pytest.fixture
def set_password(services: Services) -> Callable[[str, str], None]:
    def set_(username: str, password: str = PASSWORD) -> None:
        with services.db.writing() as session:
            user = find_user(session, username)
            assert user is not None
            passwords.set_password(session, user, password, now=services.clock.now())
            session.commit()

    return set_


@pytest.fixture
def browser(client: TestClient, set_password: Callable[[str, str], None]) -> Callable[..., Browser]:
    """`browser()` is signed out; `browser("alice")` is signed in as alice."""

    def open_(username: str | None = None) -> Browser:
        opened = Browser(client.app)  # type: ignore[arg-type]
        if username is not None:
            set_password(username, PASSWORD)
            response = opened.sign_in(username)
            assert response.status_code == 303, response.text
        return opened

    return open_


def audit_rows(services: Services, **where: Any) -> list[AuditRecord]:
    """Audit records matching every `column=value`, oldest first."""
    from sqlalchemy import select

    stmt = select(AuditRecord).order_by(AuditRecord.seq)
    for column, value in where.items():
        stmt = stmt.where(getattr(AuditRecord, column) == value)
    with services.db.reading() as session:
        return list(session.scalars(stmt))
