"""The `opsgate` command line against a real test database (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, func, select
from typer.testing import CliRunner

from opsgate.cli import app
from opsgate.core.actions.policy import load_policy
from opsgate.core.clock import FrozenClock
from opsgate.core.identity.users import find_user
from opsgate.db.engine import Database
from opsgate.db.models import ApiToken, AuditRecord, User
from opsgate.settings import get_settings
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import TestDatabase, World
from tests.registries import build_registry

runner = CliRunner()


@pytest.fixture
def cli_db(test_db: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestDatabase]:
    """Point the CLI's settings at the test database."""
    monkeypatch.setenv("OPSGATE_DATABASE_URL", test_db.url)
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    get_settings.cache_clear()
    yield test_db
    get_settings.cache_clear()


@pytest.fixture
def demo_policy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings for commands that need no database: the demo policy, a throwaway URL."""
    monkeypatch.delenv("OPSGATE_POLICY", raising=False)
    monkeypatch.setenv("OPSGATE_DATABASE_URL", "sqlite:///:memory:")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args))


def flat(text: str) -> str:
    """Output with all whitespace runs collapsed (Rich wraps long lines)."""
    return " ".join(text.split())


def stderr_of(result: Result) -> str:
    try:
        return result.stderr
    except ValueError:  # older Click: stderr mixed into output
        return result.output


# --- tokens ----------------------------------------------------------------------------------


def create_token(username: str, *extra: str) -> str:
    result = invoke("tokens", "create", username, *extra)
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.strip().splitlines()
    assert lines, result.output
    secret = lines[-1]
    assert re.fullmatch(r"ogt_[A-Za-z0-9_-]{40,}", secret), lines
    return secret


def token_row(db: Database, secret: str) -> ApiToken:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    with db.reading() as session:
        row = session.scalars(select(ApiToken).where(ApiToken.secret_hash == digest)).one()
        session.expunge(row)
    return row


def test_tokens_create_prints_a_token_that_authenticates(
    cli_db: TestDatabase, client: TestClient, db: Database, world: World
) -> None:
    secret = create_token("alice")

    response = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "cli-token-1"},
        json={"target": f"customer:{world.customer()}", "payload": {"text": "x"}, "reason": "r"},
    )
    assert response.status_code == 200, response.text
    row = token_row(db, secret)
    assert row.user_id == world.user_ids["alice"]
    with db.reading() as session:
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.client_request_id == "cli-token-1")
        ).one()
    assert (audit.actor_id, audit.credential_id) == (world.user_ids["alice"], row.id)


def test_token_secret_is_stored_only_as_its_sha256(
    cli_db: TestDatabase, db: Database, world: World
) -> None:
    secret = create_token("rita")

    row = token_row(db, secret)
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    # No column of any table holds the secret (the CLI's own audit record included).
    metadata = MetaData()
    metadata.reflect(db.engine)
    assert "api_tokens" in metadata.tables and "audit_records" in metadata.tables
    with db.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for values in conn.execute(table.select()):
                for column, value in zip(table.columns, values, strict=True):
                    assert secret not in str(value), f"{table.name}.{column.name}"
    with db.reading() as session:
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "token.create")
        ).one()
    assert audit.target == f"user:{world.user_ids['rita']}"
    assert audit.parameters is not None and audit.parameters["token_id"] == row.id


def test_token_expiry_defaults_and_can_be_set(cli_db: TestDatabase, db: Database) -> None:
    default = token_row(db, create_token("alice"))
    short = token_row(db, create_token("alice", "--expires-in", "30m"))
    long = token_row(db, create_token("alice", "--expires-in", "90d"))

    assert default.expires_at - default.created_at == timedelta(days=30)
    assert short.expires_at - short.created_at == timedelta(minutes=30)
    assert long.expires_at - long.created_at == timedelta(days=90)


def test_token_with_short_expiry_stops_working(
    cli_db: TestDatabase, client: TestClient, clock: FrozenClock
) -> None:
    secret = create_token("alice", "--expires-in", "30m")
    headers = {"Authorization": f"Bearer {secret}"}

    clock.advance(timedelta(minutes=29))
    assert client.get("/api/v1/actions", headers=headers).status_code == 200
    clock.advance(timedelta(minutes=2))
    assert client.get("/api/v1/actions", headers=headers).status_code == 401


@pytest.mark.parametrize("value", ["30", "5x", "0m", "366d", "-1h"])
def test_token_with_bad_expiry_is_refused(cli_db: TestDatabase, db: Database, value: str) -> None:
    with db.reading() as session:
        before = session.scalar(select(func.count()).select_from(ApiToken))
    result = invoke("tokens", "create", "alice", "--expires-in", value)

    assert result.exit_code != 0
    assert not result.stdout.strip()
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(ApiToken)) == before


def test_token_for_unknown_user_is_refused(cli_db: TestDatabase) -> None:
    result = invoke("tokens", "create", "mallory")
    assert result.exit_code == 1
    assert not result.stdout.strip()
    assert "mallory" in stderr_of(result)


def test_tokens_revoke_makes_the_token_fail(
    cli_db: TestDatabase, client: TestClient, db: Database
) -> None:
    secret = create_token("olga")
    headers = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/actions", headers=headers).status_code == 200

    token_id = token_row(db, secret).id
    result = invoke("tokens", "revoke", token_id)

    assert result.exit_code == 0, result.output
    assert token_row(db, secret).revoked_at is not None
    response = client.get("/api/v1/actions", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    with db.reading() as session:
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "token.revoke")
        ).one()
    assert audit.parameters == {"token_id": token_id}


def test_revoking_an_unknown_token_fails(cli_db: TestDatabase) -> None:
    result = invoke("tokens", "revoke", "tok_01AAAAAAAAAAAAAAAAAAAAAAAA")
    assert result.exit_code == 1


# --- users -----------------------------------------------------------------------------------


def user_roles(db: Database, username: str) -> set[str] | None:
    with db.reading() as session:
        user = find_user(session, username)
        return None if user is None else set(user.role_names())


def test_users_create_with_roles(cli_db: TestDatabase, client: TestClient, db: Database) -> None:
    result = invoke(
        "users", "create", "carol", "--role", "support_agent", "--role", "auditor", "--name", "C"
    )

    assert result.exit_code == 0, result.output
    user_id = result.stdout.strip().splitlines()[-1]
    assert user_roles(db, "carol") == {"support_agent", "auditor"}
    with db.reading() as session:
        user = session.get(User, user_id)
        assert user is not None and user.username == "carol" and user.display_name == "C"
        audit = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "user.create")
        ).one()
    assert audit.target == f"user:{user_id}"
    # The new user acts with exactly those roles.
    secret = create_token("carol")
    listed = client.get("/api/v1/actions", headers={"Authorization": f"Bearer {secret}"})
    policy = load_policy(DEMO_POLICY, build_registry())
    roles = frozenset({"support_agent", "auditor"})
    expected = {name for name in build_registry().names() if policy.may_start(roles, name)}
    assert expected and {i["name"] for i in listed.json()["items"]} == expected
    assert client.get("/api/v1/audit", headers={"Authorization": f"Bearer {secret}"}).is_success


def test_users_create_refuses_an_unknown_role(cli_db: TestDatabase, db: Database) -> None:
    result = invoke("users", "create", "dave", "--role", "support_agent", "--role", "superuser")

    assert result.exit_code != 0
    assert "superuser" in stderr_of(result)
    assert user_roles(db, "dave") is None


def test_users_create_refuses_an_existing_user(cli_db: TestDatabase, db: Database) -> None:
    result = invoke("users", "create", "alice", "--role", "admin")
    assert result.exit_code == 1
    assert user_roles(db, "alice") == {"support_agent"}


# --- policy check ----------------------------------------------------------------------------


def demo_version() -> str:
    return load_policy(DEMO_POLICY, build_registry()).version


@pytest.mark.usefixtures("demo_policy_env")
def test_policy_check_accepts_the_demo_policy() -> None:
    for args in (["policy", "check"], ["policy", "check", str(DEMO_POLICY)]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert demo_version() in result.stdout
        assert re.search(r"\b[0-9a-f]{64}\b", result.stdout)


def broken(text: str, old: str, new: str) -> str:
    assert old in text, f"the demo policy changed: {old!r} not found"
    return text.replace(old, new, 1)


DEMO_TEXT = DEMO_POLICY.read_text(encoding="utf-8")
UNBLOCK = '[actions."account.unblock"]\nallow = ["risk_reviewer", "ops_lead", "admin"]\n'
KYC = (
    '[actions."kyc.rerun_check"]\nallow = ["support_agent", "risk_reviewer", "ops_lead", "admin"]\n'
)
BROKEN: dict[str, tuple[str, str]] = {
    "unknown-role": (
        broken(DEMO_TEXT, UNBLOCK, UNBLOCK.replace('"admin"]', '"admin", "ghost"]')),
        "actions.account.unblock.allow: unknown role 'ghost'",
    ),
    "unknown-action": (
        DEMO_TEXT + '\n[actions."money.print"]\nallow = ["admin"]\n',
        "actions.money.print: no such action is registered",
    ),
    "missing-action-entry": (
        broken(DEMO_TEXT, KYC, ""),
        "actions.kyc.rerun_check: registered action has no policy entry",
    ),
    "unknown-key": (
        broken(DEMO_TEXT, UNBLOCK, UNBLOCK + 'deny = ["auditor"]\n'),
        "actions.account.unblock.deny: unknown key",
    ),
    "unknown-capability-role": (
        broken(DEMO_TEXT, '"admin", "auditor"]', '"admin", "auditors"]'),
        "unknown role 'auditors'",
    ),
    "not-toml": (DEMO_TEXT + "\n[roles.\n", "not valid TOML"),
}


@pytest.mark.usefixtures("demo_policy_env")
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_policy_check_rejects_a_broken_policy_naming_the_place(tmp_path: Path, case: str) -> None:
    text, place = BROKEN[case]
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")

    result = invoke("policy", "check", str(path))

    assert result.exit_code != 0
    assert "valid; version" not in result.stdout
    assert place in flat(stderr_of(result)), stderr_of(result)


@pytest.mark.usefixtures("demo_policy_env")
def test_policy_check_reports_a_missing_file(tmp_path: Path) -> None:
    result = invoke("policy", "check", str(tmp_path / "absent.toml"))
    assert result.exit_code != 0
    assert "cannot read" in flat(stderr_of(result))


@pytest.mark.usefixtures("demo_policy_env")
@pytest.mark.parametrize("role", ["ops[eu]", "[/eu]"])
def test_policy_check_reports_problem_text_verbatim(tmp_path: Path, role: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(
        broken(DEMO_TEXT, UNBLOCK, UNBLOCK.replace('"admin"]', f'"admin", "{role}"]')),
        encoding="utf-8",
    )
    result = invoke("policy", "check", str(path))
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"actions.account.unblock.allow: unknown role '{role}'" in flat(stderr_of(result))


# --- demo seed -------------------------------------------------------------------------------


SHAPES: dict[str, dict[str, type]] = {
    "customers": {"id": str, "email": str},
    "accounts": {"id": str, "customer_id": str, "balance_minor": int, "currency": str},
    "payments": {"id": str, "account_id": str, "amount_minor": int, "currency": str},
}
AT_LEAST = {"customers": 200, "accounts": 300, "payments": 1000}


def test_demo_seed_json_on_a_seeded_database(
    cli_db: TestDatabase, db: Database, world: World
) -> None:
    from opsgate_demo.models import Customer

    result = invoke("demo", "seed", "--json")

    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "stdout must hold exactly one JSON document"
    data: dict[str, list[dict[str, Any]]] = json.loads(lines[0])
    assert set(data) == set(SHAPES)
    for key, shape in SHAPES.items():
        assert len(data[key]) >= AT_LEAST[key], key
        for item in data[key]:
            assert set(item) == set(shape), (key, item)
            for field, kind in shape.items():
                assert isinstance(item[field], kind) and not isinstance(item[field], bool)
        assert len({item["id"] for item in data[key]}) == len(data[key]), key
        # The same records the database was seeded with, not new ones.
        assert {i["id"] for i in data[key]} == {i["id"] for i in getattr(world.summary, key)}
    customers = {c["id"] for c in data["customers"]}
    accounts = {a["id"] for a in data["accounts"]}
    assert all(a["customer_id"] in customers for a in data["accounts"])
    assert all(p["account_id"] in accounts for p in data["payments"])
    assert all(re.fullmatch(r"[A-Z]{3}", i["currency"]) for i in data["accounts"])
    assert all("@" in c["email"] for c in data["customers"])
    with db.reading() as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == len(customers)


# --- approvals recover ----------------------------------------------------------------------


def test_approvals_recover_executes_a_stranded_approval_once(cli_db: TestDatabase) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import update

    from opsgate.core.identity.actors import Actor, Origin
    from opsgate.db.models import ApprovalRequest
    from opsgate.web.services import Services

    world = cli_db.world
    services = Services.build(get_settings())
    account = world.account(2)
    alice = Actor(id=world.user_ids["alice"], name="alice", roles=frozenset({"support_agent"}))
    rita = Actor(id=world.user_ids["rita"], name="rita", roles=frozenset({"risk_reviewer"}))
    services.gateway.submit(
        alice,
        "account.block",
        {
            "target": f"account:{account}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "x",
        },
        Origin("cli-block"),
    )
    held = services.gateway.submit(
        rita,
        "account.unblock",
        {"target": f"account:{account}", "payload": {}, "reason": "verified"},
        Origin("cli-unblock"),
    )
    # As an older opsgate left it when killed between the approval and the execution.
    with services.db.writing() as session:
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == held.approval_id)
            .values(status="approved", decided_at=datetime.now(UTC) - timedelta(minutes=5))
        )
        session.commit()
    services.db.dispose()

    first = invoke("approvals", "recover")
    assert first.exit_code == 0, (first.output, first.exception)
    assert first.stdout.split() == [str(held.approval_id), "succeeded"]
    second = invoke("approvals", "recover")
    assert second.exit_code == 0
    assert second.stdout.strip() == ""
    db = Database(cli_db.url)
    with db.reading() as session:
        executions = session.scalars(
            select(AuditRecord).where(
                AuditRecord.approval_id == held.approval_id,
                AuditRecord.execution_request_id.is_not(None),
            )
        ).all()
        assert [r.result for r in executions] == ["succeeded"]
    db.dispose()


def test_version_prints_the_distributions_version() -> None:
    import tomllib

    import opsgate

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"opsgate {declared}"
    assert opsgate.__version__ == declared  # the two places a release must bump agree
