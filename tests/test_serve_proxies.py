"""`opsgate serve` and X-Forwarded-For: trusted only from the proxies the setting names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from opsgate.core.identity import passwords
from opsgate.core.identity.users import find_user
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from tests.conftest import TestDatabase
from tests.servers import Server, start_server

pytestmark = pytest.mark.multiprocess

PASSWORD = "correct horse battery staple"
SECRET = "proxy-test-secret-key-" + "x" * 32


def _serve(test_db: TestDatabase, tmp_path: Path, **env: str) -> Iterator[Server]:
    database = Database(test_db.url)
    with database.writing() as session:
        user = find_user(session, "alice")
        assert user is not None
        passwords.set_password(session, user, PASSWORD, now=user.created_at)
        session.commit()
    database.dispose()
    server = start_server(
        test_db.url,
        tmp_path / "server.log",
        OPSGATE_SECRET_KEY=SECRET,
        OPSGATE_SECRET_KEY_FILE=str(tmp_path / "key"),
        **env,
    )
    yield server
    server.stop()


@pytest.fixture
def untrusting(test_db: TestDatabase, tmp_path: Path) -> Iterator[Server]:
    """A server with the default setting: no proxy is trusted."""
    yield from _serve(test_db, tmp_path)


@pytest.fixture
def behind_proxy(test_db: TestDatabase, tmp_path: Path) -> Iterator[Server]:
    """A server that trusts the proxy at 127.0.0.1 (where the test connects from)."""
    yield from _serve(test_db, tmp_path, OPSGATE_FORWARDED_ALLOW_IPS="127.0.0.1")


def _sign_in(server: Server, client_ip: str, username: str, password: str) -> int:
    with httpx.Client(base_url=server.base_url, headers={"X-Forwarded-For": client_ip}) as http:
        page = http.get("/console/login")
        match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert match, page.text
        answer = http.post(
            "/console/login",
            data={"username": username, "password": password, "csrf_token": match.group(1)},
        )
        return answer.status_code


def _refusal_addresses(test_db: TestDatabase) -> list[str | None]:
    database = Database(test_db.url)
    with database.reading() as session:
        rows = session.scalars(select(AuditRecord).where(AuditRecord.action == "auth.token"))
        addresses = [row.origin_ip for row in rows]
    database.dispose()
    return addresses


def test_a_spoofed_forwarded_for_does_not_change_the_address(
    untrusting: Server, test_db: TestDatabase
) -> None:
    answer = httpx.get(
        f"{untrusting.base_url}/api/v1/actions", headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert answer.status_code == 401
    assert _refusal_addresses(test_db) == ["127.0.0.1"]


def test_behind_a_trusted_proxy_each_client_address_is_throttled_separately(
    behind_proxy: Server, test_db: TestDatabase
) -> None:
    guesser, colleague = "198.51.100.1", "198.51.100.2"
    for n in range(5):
        assert _sign_in(behind_proxy, guesser, f"nobody{n}", "a wrong guess") == 401
    assert _sign_in(behind_proxy, guesser, "alice", PASSWORD) == 429  # this address is locked
    assert _sign_in(behind_proxy, colleague, "alice", PASSWORD) == 303  # this one is not
    httpx.get(f"{behind_proxy.base_url}/api/v1/actions", headers={"X-Forwarded-For": "1.2.3.4"})
    assert _refusal_addresses(test_db) == ["1.2.3.4"]


def test_without_a_trusted_proxy_setting_the_proxy_is_one_address(
    untrusting: Server, test_db: TestDatabase
) -> None:
    """What the setting is for: behind a proxy that is not trusted, everyone shares its
    address, so one person's guesses lock out the rest (docs/operations.md)."""
    for n in range(5):
        assert _sign_in(untrusting, "198.51.100.1", f"nobody{n}", "a wrong guess") == 401
    assert _sign_in(untrusting, "198.51.100.2", "alice", PASSWORD) == 429


def test_serve_hands_the_trusted_proxies_to_uvicorn(
    monkeypatch: pytest.MonkeyPatch, test_db: TestDatabase
) -> None:
    import uvicorn
    from typer.testing import CliRunner

    from opsgate.cli import app
    from opsgate.settings import get_settings

    runs: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: runs.append(kwargs))
    monkeypatch.delenv("OPSGATE_FORWARDED_ALLOW_IPS", raising=False)
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    # `serve` checks the audit chain of a migrated database before it starts.
    monkeypatch.setenv("OPSGATE_DATABASE_URL", test_db.url)
    get_settings.cache_clear()
    runner = CliRunner()
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--forwarded-allow-ips", "10.0.0.0/8"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--forwarded-allow-ips", "10.0.0.1;x"]).exit_code == 2
    get_settings.cache_clear()
    assert [(r["proxy_headers"], r["forwarded_allow_ips"]) for r in runs] == [
        (False, None),
        (True, "10.0.0.0/8"),
    ]
