"""`POST /api/v1/actions/{name}` over HTTP: success, every problem code, and the audit trail.

Every refusal must answer an RFC 9457 problem carrying the request ID, write exactly one audit
record with that request ID and the right result, and leave domain state untouched.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, or_, select

from opsgate.core.clock import FrozenClock
from opsgate.core.identity.tokens import hash_secret, revoke_token
from opsgate.db.engine import Database
from opsgate.db.models import ApiToken, AuditRecord
from opsgate.settings import Settings
from opsgate.web.app import create_app
from opsgate.web.services import Services
from opsgate_demo.models import Account, AccountKind, AccountStatus, Note
from opsgate_demo.plugin import DEMO_POLICY
from opsgate_demo.targets import account_state
from tests.conftest import TestDatabase, World

PROBLEM = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


# --- helpers ---------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the RFC 9457 shape of an error answer and return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["type"], str) and code in body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def audit_rows(db: Database, request_id: str) -> list[AuditRecord]:
    """The records of a request, by opsgate's request ID or the caller's X-Request-ID."""
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(
                    or_(
                        AuditRecord.request_id == request_id,
                        AuditRecord.client_request_id == request_id,
                    )
                )
                .order_by(AuditRecord.seq)
            )
        )


def count(db: Database, model: Any) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def account_snapshot(db: Database, account_id: str) -> dict[str, Any]:
    with db.reading() as session:
        account = session.get(Account, account_id)
        assert account is not None
        return account_state(account)


def active_account(db: Database) -> str:
    """An active customer account (the demo data has a few blocked ones)."""
    with db.reading() as session:
        ident = session.scalars(
            select(Account.id)
            .where(Account.kind == AccountKind.CUSTOMER, Account.status == AccountStatus.ACTIVE)
            .order_by(Account.id)
            .limit(1)
        ).one()
    return ident


def system_account(db: Database) -> str:
    with db.reading() as session:
        ident = session.scalars(
            select(Account.id).where(Account.kind == AccountKind.SYSTEM).limit(1)
        ).one()
    return ident


def token_id(db: Database, secret: str) -> str:
    with db.reading() as session:
        ident = session.scalars(
            select(ApiToken.id).where(ApiToken.secret_hash == hash_secret(secret))
        ).one()
    return ident


def policy_entry(services: Services, action: str) -> dict[str, Any]:
    document = tomllib.loads(services.settings.policy.read_text(encoding="utf-8"))
    entry: dict[str, Any] = document["actions"][action]
    return entry


def post(
    client: TestClient,
    action: str,
    request_id: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    return client.post(
        f"/api/v1/actions/{action}",
        headers={"X-Request-ID": request_id, **(headers or {})},
        **kwargs,
    )


def block_body(account_id: str, reason_code: str = "fraud_suspected") -> dict[str, Any]:
    return {
        "target": f"account:{account_id}",
        "payload": {"reason_code": reason_code},
        "reason": "card skimming reported",
    }


# --- success ---------------------------------------------------------------------------------


def test_add_note_succeeds_writes_the_note_and_one_audit_record(
    client: TestClient, db: Database, world: World
) -> None:
    customer = world.customer(3)
    response = post(
        client,
        "customer.add_note",
        "req-note-ok",
        world.auth("alice"),
        json={
            "target": f"customer:{customer}",
            "payload": {"text": "Called about a late card."},
            "reason": "ticket 4711",
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"status", "request_id", "result", "audit_id"}
    assert body["status"] == "succeeded"
    assert body["request_id"] == response.headers["x-request-id"] != "req-note-ok"
    assert body["result"]["customer_id"] == customer
    with db.reading() as session:
        note = session.get(Note, body["result"]["note_id"])
        assert note is not None
        assert (note.customer_id, note.text) == (customer, "Called about a late card.")
        assert note.author_id == world.user_ids["alice"]
    [row] = audit_rows(db, "req-note-ok")
    assert row.id == body["audit_id"]
    assert (row.action, row.result, row.target) == (
        "customer.add_note",
        "succeeded",
        f"customer:{customer}",
    )
    assert row.actor_id == world.user_ids["alice"]
    assert row.credential_id == token_id(db, world.tokens["alice"])
    assert row.reason == "ticket 4711"
    assert row.parameters == {"text": "Called about a late card."}
    assert row.outcome == body["result"]
    assert row.error_code is None


def test_account_block_records_before_and_after(
    client: TestClient, db: Database, world: World
) -> None:
    account = active_account(db)
    response = post(
        client, "account.block", "req-block-ok", world.auth("rita"), json=block_body(account)
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["result"] == {"account_id": account, "status": "blocked"}
    [row] = audit_rows(db, "req-block-ok")
    assert row.id == body["audit_id"]
    assert row.before is not None and row.after is not None
    assert (row.before["status"], row.after["status"]) == ("active", "blocked")
    assert (row.before["blocked_reason"], row.after["blocked_reason"]) == (
        None,
        "fraud_suspected",
    )
    assert row.after == account_snapshot(db, account)


def test_action_under_approval_answers_202_pending_and_changes_nothing(
    client: TestClient, db: Database, world: World, services: Services
) -> None:
    # The demo policy makes account.unblock wait for a second person.
    assert policy_entry(services, "account.unblock").get("approval", {}).get("mode") == "enforce"
    account = active_account(db)
    assert post(
        client, "account.block", "r-b", world.auth("rita"), json=block_body(account)
    ).is_success
    before = account_snapshot(db, account)
    response = post(
        client,
        "account.unblock",
        "r-u",
        world.auth("rita"),
        json={"target": f"account:{account}", "payload": {}, "reason": "customer verified"},
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending_approval"
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["approval_id"]
    assert account_snapshot(db, account) == before
    [row] = audit_rows(db, "r-u")
    assert (row.action, row.result) == ("account.unblock", "approval_requested")
    assert row.actor_id == world.user_ids["rita"]


# --- 401 unauthenticated ---------------------------------------------------------------------


def assert_unauthenticated(
    response: httpx.Response, db: Database, request_id: str, notes_before: int
) -> dict[str, Any]:
    body = assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    [row] = audit_rows(db, request_id)
    assert (row.action, row.result, row.error_code) == ("auth.token", "denied", "unauthenticated")
    assert row.actor_id is None
    assert count(db, Note) == notes_before
    return body


def note_body(world: World) -> dict[str, Any]:
    return {"target": f"customer:{world.customer()}", "payload": {"text": "x"}, "reason": "r"}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-header"),
        pytest.param({"Authorization": "Basic YWxpY2U6cHc="}, id="basic-scheme"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-without-token"),
        pytest.param({"Authorization": "Bearer   "}, id="bearer-blank"),
        pytest.param({"Authorization": "Token ogt_abc"}, id="other-scheme"),
        pytest.param({"Authorization": "Bearer ogt_not-a-real-token"}, id="unknown-token"),
    ],
)
def test_missing_malformed_or_unknown_credentials_are_401_and_audited(
    client: TestClient, db: Database, world: World, headers: dict[str, str]
) -> None:
    notes_before = count(db, Note)
    response = post(client, "customer.add_note", "req-401", headers, json=note_body(world))
    assert_unauthenticated(response, db, "req-401", notes_before)


def test_expired_token_is_401(
    client: TestClient, db: Database, world: World, clock: FrozenClock
) -> None:
    clock.advance(timedelta(days=6))  # demo tokens last 7 days: still valid
    assert client.get("/api/v1/actions", headers=world.auth("alice")).status_code == 200

    clock.advance(timedelta(days=2))
    notes_before = count(db, Note)
    response = post(
        client, "customer.add_note", "req-expired", world.auth("alice"), json=note_body(world)
    )
    assert_unauthenticated(response, db, "req-expired", notes_before)


def test_revoked_token_is_401_at_once(
    client: TestClient, db: Database, world: World, clock: FrozenClock
) -> None:
    assert client.get("/api/v1/actions", headers=world.auth("bob")).status_code == 200
    with db.writing() as session:
        revoke_token(session, token_id(db, world.tokens["bob"]), now=clock.now())
        session.commit()

    notes_before = count(db, Note)
    response = post(
        client, "customer.add_note", "req-revoked", world.auth("bob"), json=note_body(world)
    )
    assert_unauthenticated(response, db, "req-revoked", notes_before)


def test_unknown_expired_and_revoked_tokens_get_the_same_answer(
    client: TestClient, db: Database, world: World, clock: FrozenClock
) -> None:
    # A caller must not learn which tokens exist.
    with db.writing() as session:
        revoke_token(session, token_id(db, world.tokens["bob"]), now=clock.now())
        session.commit()
    revoked = client.get("/api/v1/actions", headers=world.auth("bob")).json()["detail"]
    unknown = client.get("/api/v1/actions", headers={"Authorization": "Bearer ogt_nope"}).json()[
        "detail"
    ]
    clock.advance(timedelta(days=8))
    expired = client.get("/api/v1/actions", headers=world.auth("alice")).json()["detail"]
    assert revoked == unknown == expired


# --- 403 forbidden ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "action"), [("audrey", "account.block"), ("alice", "account.unblock")]
)
def test_forbidden_is_403_audited_and_changes_nothing(
    client: TestClient, db: Database, world: World, user: str, action: str
) -> None:
    account = active_account(db)
    before = account_snapshot(db, account)
    body = {"target": f"account:{account}", "payload": {}, "reason": "trying"}
    if action == "account.block":
        body = block_body(account)
    response = post(client, action, "req-403", world.auth(user), json=body)

    problem = assert_problem(response, 403, "forbidden")
    assert action in problem["detail"]
    [row] = audit_rows(db, "req-403")
    assert (row.action, row.result, row.error_code) == (action, "denied", "forbidden")
    assert row.actor_id == world.user_ids[user]
    assert account_snapshot(db, account) == before


def test_permission_is_decided_before_the_payload_is_read(
    client: TestClient, db: Database, world: World
) -> None:
    # alice may not unblock: she gets 403 even for a malformed body, not a hint about its shape.
    response = post(
        client, "account.unblock", "req-403-bad", world.auth("alice"), content=b"{nonsense"
    )
    assert_problem(response, 403, "forbidden")
    assert [r.error_code for r in audit_rows(db, "req-403-bad")] == ["forbidden"]


# --- 404 unknown_action / target_not_found ---------------------------------------------------


def test_unknown_action_is_404_and_audited(client: TestClient, db: Database, world: World) -> None:
    response = post(client, "money.print", "req-unknown", world.auth("olga"), json=note_body(world))

    assert_problem(response, 404, "unknown_action")
    [row] = audit_rows(db, "req-unknown")
    assert (row.action, row.result, row.error_code) == ("money.print", "invalid", "unknown_action")
    assert row.actor_id == world.user_ids["olga"]


@pytest.mark.parametrize("which", ["missing", "system"])
def test_missing_target_is_404_and_audited(
    client: TestClient, db: Database, world: World, which: str
) -> None:
    # System (settlement) accounts exist but are not operator targets.
    account = "acc_01AAAAAAAAAAAAAAAAAAAAAAAA" if which == "missing" else system_account(db)
    before = count(db, AuditRecord)
    response = post(
        client, "account.block", "req-404", world.auth("olga"), json=block_body(account)
    )

    assert_problem(response, 404, "target_not_found")
    [row] = audit_rows(db, "req-404")
    assert (row.action, row.result, row.error_code) == (
        "account.block",
        "invalid",
        "target_not_found",
    )
    assert row.target == f"account:{account}"
    assert count(db, AuditRecord) == before + 1
    if which == "system":
        assert account_snapshot(db, account)["status"] == "active"


# --- 422 invalid_payload ---------------------------------------------------------------------


def _body(account: str, **overrides: Any) -> dict[str, Any]:
    return block_body(account) | overrides


INVALID_BODIES: dict[str, Any] = {
    "bad-json": b'{"target": "account:',
    "not-an-object": b"[1, 2]",
    "missing-reason": lambda a: {k: v for k, v in block_body(a).items() if k != "reason"},
    "blank-reason": lambda a: _body(a, reason="   "),
    "extra-envelope-field": lambda a: _body(a, sneaky=True),
    "extra-payload-field": lambda a: _body(
        a, payload={"reason_code": "fraud_suspected", "amount": 5}
    ),
    "bad-reason-code": lambda a: _body(a, payload={"reason_code": "because"}),
    "missing-payload-field": lambda a: _body(a, payload={}),
    "wrong-target-kind": lambda a: _body(a, target="customer:cus_01AAAAAAAAAAAAAAAAAAAAAAAA"),
    "malformed-target": lambda a: _body(a, target="account-without-colon"),
}


@pytest.mark.parametrize("case", sorted(INVALID_BODIES))
def test_invalid_input_is_422_audited_and_changes_nothing(
    client: TestClient, db: Database, world: World, case: str
) -> None:
    account = active_account(db)
    before = account_snapshot(db, account)
    raw = INVALID_BODIES[case]
    url, headers = "/api/v1/actions/account.block", world.auth("olga")
    if isinstance(raw, bytes):
        headers |= {"Content-Type": "application/json"}
        response = client.post(url, content=raw, headers=headers)
    else:
        response = client.post(url, json=raw(account), headers=headers)
    problem = assert_problem(response, 422, "invalid_payload")
    assert problem["errors"], problem
    assert all("loc" in error for error in problem["errors"])
    [row] = audit_rows(db, problem["request_id"])
    assert (row.action, row.result, row.error_code) == (
        "account.block",
        "invalid",
        "invalid_payload",
    )
    assert account_snapshot(db, account) == before


def test_invalid_payload_does_not_echo_the_rejected_input(
    client: TestClient, db: Database, world: World
) -> None:
    account = active_account(db)
    response = post(
        client,
        "account.block",
        "req-echo",
        world.auth("olga"),
        json=_body(account, payload={"reason_code": "SECRET-4111111111111111"}),
    )
    assert_problem(response, 422, "invalid_payload")
    assert "4111111111111111" not in response.text


# --- 409 domain_rejected ---------------------------------------------------------------------


def test_blocking_a_blocked_account_is_409_and_changes_nothing(
    client: TestClient, db: Database, world: World
) -> None:
    account = active_account(db)
    first = post(client, "account.block", "r-1", world.auth("rita"), json=block_body(account))
    assert first.status_code == 200
    before = account_snapshot(db, account)
    audits_before = count(db, AuditRecord)

    response = post(
        client,
        "account.block",
        "req-409",
        world.auth("rita"),
        json=block_body(account, "customer_request"),
    )

    assert_problem(response, 409, "domain_rejected")
    assert account_snapshot(db, account) == before  # still blocked for the first reason
    assert before["blocked_reason"] == "fraud_suspected"
    [row] = audit_rows(db, "req-409")
    assert (row.result, row.error_code) == ("failed", "domain_rejected:account_already_blocked")
    assert row.before is None and row.after is None
    assert count(db, AuditRecord) == audits_before + 1


@pytest.fixture
def client_without_approvals(
    test_db: TestDatabase, clock: FrozenClock, tmp_path: Path
) -> Iterator[TestClient]:
    """The app under the demo policy with account.unblock's approval rule switched off."""
    text = DEMO_POLICY.read_text(encoding="utf-8")
    switched, n = re.subn(
        r'(\[actions\."account\.unblock"\.approval\]\s*\nmode\s*=\s*)"enforce"', r'\1"off"', text
    )
    assert n == 1, "the demo policy's account.unblock approval rule changed shape"
    path = tmp_path / "policy.toml"
    path.write_text(switched, encoding="utf-8")
    settings = Settings(database_url=test_db.url, policy=path)
    services = Services.build(settings, clock=clock)
    app = create_app(settings, services, configure_logs=False)
    try:
        with TestClient(app, raise_server_exceptions=False) as test_client:
            yield test_client
    finally:
        services.db.dispose()


def test_unblocking_an_active_account_is_409_and_changes_nothing(
    client_without_approvals: TestClient, db: Database, world: World
) -> None:
    account = active_account(db)
    before = account_snapshot(db, account)
    response = post(
        client_without_approvals,
        "account.unblock",
        "req-409u",
        world.auth("raj"),
        json={"target": f"account:{account}", "payload": {}, "reason": "please"},
    )

    assert_problem(response, 409, "domain_rejected")
    assert account_snapshot(db, account) == before
    [row] = audit_rows(db, "req-409u")
    assert (row.action, row.result, row.error_code) == (
        "account.unblock",
        "failed",
        "domain_rejected:account_not_blocked",
    )
    assert row.actor_id == world.user_ids["raj"]


def test_unblocking_an_active_account_is_refused_before_asking_for_approval(
    client: TestClient, db: Database, world: World
) -> None:
    account = active_account(db)
    before = account_snapshot(db, account)
    response = post(
        client,
        "account.unblock",
        "req-409a",
        world.auth("raj"),
        json={"target": f"account:{account}", "payload": {}, "reason": "please"},
    )
    assert account_snapshot(db, account) == before
    assert_problem(response, 409, "domain_rejected")
    [row] = audit_rows(db, "req-409a")
    assert (row.result, row.error_code) == ("failed", "domain_rejected:account_not_blocked")


# --- routing errors --------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/nothing-here", "/api/v2/actions", "/favicon.ico"])
def test_unknown_route_is_a_404_problem(client: TestClient, world: World, path: str) -> None:
    response = client.get(path, headers={"X-Request-ID": "req-route", **world.auth("alice")})
    body = assert_problem(response, 404, "not_found")
    assert body["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("GET", "/api/v1/actions/customer.add_note", "POST"),
        ("DELETE", "/api/v1/actions", "GET"),
        ("PUT", "/api/v1/actions/account.block", "POST"),
    ],
)
def test_wrong_method_is_a_405_problem(
    client: TestClient, world: World, method: str, path: str, allowed: str
) -> None:
    response = client.request(
        method, path, headers={"X-Request-ID": "req-405", **world.auth("alice")}
    )
    body = assert_problem(response, 405, "method_not_allowed")
    assert body["request_id"] == response.headers["x-request-id"]
    assert allowed in response.headers["allow"]
