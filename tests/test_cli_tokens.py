"""`opsgate tokens`: a token belongs to its person. With self-service tokens on, the CLI
mints only for service accounts; every CLI token is audited with the OS user and host and
announced to its owner."""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from opsgate.core.identity import tokens
from opsgate.db.engine import Database
from opsgate.db.models import ApiToken, AuditRecord, OutboxEvent
from opsgate.settings import get_settings
from tests.conftest import TestDatabase, World
from tests.test_cli import cli_db, create_token, invoke, stderr_of, token_row

__all__ = ["cli_db"]  # the fixture, shared with tests/test_cli.py

INTEGRATIONS = """
[webhooks.owner_inbox]
url = "http://127.0.0.1:9/hooks"
events = ["token.created"]
secret_env = "OPSGATE_TEST_OWNER_INBOX_SECRET"
"""


@pytest.fixture
def self_service(cli_db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPSGATE_SELF_SERVICE_TOKENS", "true")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def announcing(cli_db: TestDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "integrations.toml"
    path.write_text(INTEGRATIONS)
    monkeypatch.setenv("OPSGATE_INTEGRATIONS", str(path))
    monkeypatch.setenv("OPSGATE_TEST_OWNER_INBOX_SECRET", "s" * 40)
    get_settings.cache_clear()


def cli_tokens(db: Database, user_id: str) -> list[ApiToken]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(ApiToken).where(ApiToken.user_id == user_id, ApiToken.created_via == "cli")
            )
        )


def token_audits(db: Database) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.action == "token.create")
                .order_by(AuditRecord.seq)
            )
        )


def test_with_self_service_tokens_the_cli_refuses_a_token_for_a_person(
    self_service: None, db: Database, world: World
) -> None:
    result = invoke("tokens", "create", "rita")
    assert result.exit_code == 1, result.output
    assert "people create their own API tokens in the console" in " ".join(
        stderr_of(result).split()
    )
    assert cli_tokens(db, world.user_ids["rita"]) == []
    [refused] = token_audits(db)
    assert (refused.result, refused.error_code) == ("denied", "self_service_required")
    assert refused.target == f"user:{world.user_ids['rita']}"
    assert refused.parameters == {"os_user": getpass.getuser(), "host": socket.gethostname()}


def test_self_service_tokens_are_on_by_default_when_a_secret_key_is_set(
    cli_db: TestDatabase, monkeypatch: pytest.MonkeyPatch, db: Database, world: World
) -> None:
    monkeypatch.setenv("OPSGATE_SECRET_KEY", "k" * 40)
    monkeypatch.delenv("OPSGATE_SELF_SERVICE_TOKENS", raising=False)
    get_settings.cache_clear()
    assert invoke("tokens", "create", "alice").exit_code == 1
    assert cli_tokens(db, world.user_ids["alice"]) == []


def test_a_service_account_still_gets_a_cli_token(
    self_service: None, db: Database, world: World
) -> None:
    secret = create_token("prom", "--name", "scraper")
    row = token_row(db, secret)
    assert row.user_id == world.user_ids["prom"]
    with db.reading() as session:
        assert tokens.authenticate(session, secret, now=row.created_at).actor.id == row.user_id


def test_a_service_account_whose_roles_approve_gets_no_cli_token(
    self_service: None, db: Database
) -> None:
    made = invoke("users", "create", "robot", "--role", "ops_lead", "--service-account")
    assert made.exit_code == 0, made.output
    result = invoke("tokens", "create", "robot")
    assert result.exit_code == 1
    [refused] = token_audits(db)
    assert refused.error_code == "service_account_approves"


def test_a_cli_token_is_audited_with_the_os_user_and_host_and_announced_to_its_owner(
    cli_db: TestDatabase, announcing: None, db: Database, world: World
) -> None:
    row = token_row(db, create_token("alice", "--name", "laptop"))
    assert (row.created_via, row.created_os_user, row.created_host) == (
        "cli",
        getpass.getuser(),
        socket.gethostname(),
    )
    [audit] = token_audits(db)
    assert audit.actor_id == f"cli:{getpass.getuser()}"
    assert audit.parameters is not None
    assert audit.parameters["token_id"] == row.id
    assert audit.parameters["os_user"] == getpass.getuser()
    assert audit.parameters["host"] == socket.gethostname()
    with db.reading() as session:
        [event] = session.scalars(
            select(OutboxEvent).where(OutboxEvent.event_type == "token.created")
        )
    assert event.subscription == "owner_inbox"
    assert event.payload["user"]["id"] == world.user_ids["alice"]
    assert event.payload["token"]["token_id"] == row.id
    assert event.payload["token"]["host"] == socket.gethostname()
    assert event.payload["token"]["os_user"] == getpass.getuser()


def test_tokens_list_shows_each_token_with_its_origin_and_never_its_secret(
    cli_db: TestDatabase, world: World
) -> None:
    secret = create_token("alice", "--name", "laptop")
    listed = invoke("tokens", "list", "--user", "alice")
    assert listed.exit_code == 0, listed.output
    assert "laptop" in listed.stdout
    assert f"cli: {getpass.getuser()}@{socket.gethostname()}" in listed.stdout
    assert secret not in listed.stdout
    assert "rita" not in invoke("tokens", "list", "--user", "alice").stdout


def test_a_service_account_gets_no_console_password(self_service: None) -> None:
    result = invoke("users", "set-password", "prom", "--password-stdin")
    assert result.exit_code == 1
    assert "service account" in stderr_of(result)


def test_a_borrowed_login_name_shows_beside_the_real_account(
    cli_db: TestDatabase, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import pwd

    monkeypatch.setenv("LOGNAME", "someone-else")
    row = token_row(db, create_token("alice"))
    real = pwd.getpwuid(os.getuid()).pw_name
    assert row.created_os_user == f"someone-else (uid {os.getuid()}: {real})"
