"""Reads over HTTP: the audit search (filters, cursor pages, limits, permission), record
search (email, phone, name, IDs; permission), health and the OpenAPI document."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.core.actions.policy import Capability
from opsgate.core.clock import FrozenClock
from opsgate.core.identity.tokens import issue_token
from opsgate.core.identity.users import ensure_user
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.web.services import Services
from opsgate_demo.models import Account, AccountKind, Customer
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import TestDatabase, World

PROBLEM = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0].strip() == PROBLEM
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert (body["status"], body["code"]) == (status, code)
    assert body["request_id"] == response.headers["x-request-id"]
    return body


def audit_rows(db: Database, client_request_id: str) -> list[AuditRecord]:
    """The records of the request that sent `client_request_id` as its X-Request-ID."""
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord).where(AuditRecord.client_request_id == client_request_id)
            )
        )


def user_for(role: str) -> str:
    return next(username for username, _n, roles in DEMO_USERS if role in roles)


def add_note(client: TestClient, world: World, user: str, request_id: str, n: int = 0) -> None:
    response = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"X-Request-ID": request_id, **world.auth(user)},
        json={"target": f"customer:{world.customer(n)}", "payload": {"text": "t"}, "reason": "r"},
    )
    assert response.status_code == 200, response.text


def probe(client: TestClient, world: World, request_id: str, action: str = "test.page") -> None:
    """Write one audit record cheaply: an unknown action is refused and audited."""
    response = client.post(
        f"/api/v1/actions/{action}",
        headers={"X-Request-ID": request_id, **world.auth("olga")},
        json={},
    )
    assert response.status_code == 404, response.text


def read_audit(client: TestClient, world: World, **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/audit", params=params, headers=world.auth("audrey"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- audit: filters --------------------------------------------------------------------------


@pytest.fixture
def trail(client: TestClient, world: World, clock: FrozenClock) -> dict[str, Any]:
    """Four records at three instants, one minute apart; returns the instants and the
    request ID opsgate gave the denied request."""
    t0 = clock.now()
    add_note(client, world, "alice", "f-note-alice", n=0)
    clock.advance(timedelta(minutes=1))
    t1 = clock.now()
    add_note(client, world, "rita", "f-note-rita", n=1)
    clock.advance(timedelta(minutes=1))
    t2 = clock.now()
    denied = client.post(
        "/api/v1/actions/account.block",
        headers={"X-Request-ID": "f-deny-audrey", **world.auth("audrey")},
        json={"target": f"account:{world.account()}", "payload": {}, "reason": "r"},
    )
    assert denied.status_code == 403
    invalid = client.post(
        "/api/v1/actions/customer.add_note",
        headers={"X-Request-ID": "f-invalid-alice", **world.auth("alice")},
        content=b"{",
    )
    assert invalid.status_code == 422
    return {"t0": t0, "t1": t1, "t2": t2, "f-deny-audrey": denied.headers["x-request-id"]}


MINE = {"f-note-alice", "f-note-rita", "f-deny-audrey", "f-invalid-alice"}


def mine(items: list[dict[str, Any]]) -> set[str]:
    return {item["client_request_id"] for item in items} & MINE


def test_audit_filters_by_actor_action_target_request_id_and_result(
    client: TestClient, world: World, trail: dict[str, Any]
) -> None:
    alice, rita = world.user_ids["alice"], world.user_ids["rita"]
    cases: list[tuple[dict[str, str], set[str], Any]] = [
        (
            {"actor": alice},
            {"f-note-alice", "f-invalid-alice"},
            lambda i: i["actor"]["id"] == alice,
        ),
        ({"actor": rita}, {"f-note-rita"}, lambda i: i["actor"]["id"] == rita),
        (
            {"action": "customer.add_note"},
            {"f-note-alice", "f-note-rita", "f-invalid-alice"},
            lambda i: i["action"] == "customer.add_note",
        ),
        (
            {"target": f"customer:{world.customer(1)}"},
            {"f-note-rita"},
            lambda i: i["target"] == f"customer:{world.customer(1)}",
        ),
        ({"request_id": trail["f-deny-audrey"]}, {"f-deny-audrey"}, lambda i: True),
        ({"result": "denied"}, {"f-deny-audrey"}, lambda i: i["result"] == "denied"),
        ({"result": "invalid"}, {"f-invalid-alice"}, lambda i: i["result"] == "invalid"),
        (
            {"actor": alice, "result": "succeeded"},
            {"f-note-alice"},
            lambda i: i["actor"]["id"] == alice and i["result"] == "succeeded",
        ),
        ({"actor": "usr_nobody"}, set(), lambda i: False),
    ]
    for params, expected, matches in cases:
        items = read_audit(client, world, **params)["items"]
        assert mine(items) == expected, params
        assert all(matches(item) for item in items), params
    [only] = read_audit(client, world, request_id=trail["f-deny-audrey"])["items"]
    assert only["client_request_id"] == "f-deny-audrey"
    assert only["error"] == {"code": "forbidden", "message": only["error"]["message"]}


def test_audit_filters_by_time_since_inclusive_until_exclusive(
    client: TestClient, world: World, trail: dict[str, datetime]
) -> None:
    t0, t1, t2 = trail["t0"], trail["t1"], trail["t2"]
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({"since": t1.isoformat()}, {"f-note-rita", "f-deny-audrey", "f-invalid-alice"}),
        ({"since": t2.isoformat()}, {"f-deny-audrey", "f-invalid-alice"}),
        ({"until": t1.isoformat()}, {"f-note-alice"}),
        ({"since": t1.isoformat(), "until": t2.isoformat()}, {"f-note-rita"}),
        ({"since": t0.isoformat(), "until": t0.isoformat()}, set()),
        ({"since": (t2 + timedelta(seconds=1)).isoformat()}, set()),
        # A time without an offset is UTC; another offset names the same instant.
        ({"since": t1.replace(tzinfo=None).isoformat()}, {"f-note-rita", *MINE} - {"f-note-alice"}),
        (
            {"until": t1.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()},
            {"f-note-alice"},
        ),
    ]
    for params, expected in cases:
        items = read_audit(client, world, **params)["items"]
        assert mine(items) == expected, params
    for item in read_audit(client, world, since=t1.isoformat(), until=t2.isoformat())["items"]:
        assert t1 <= datetime.fromisoformat(item["occurred_at"]).astimezone(UTC) < t2


def test_bad_time_filter_is_a_422_problem(client: TestClient, world: World) -> None:
    response = client.get(
        "/api/v1/audit", params={"since": "last tuesday"}, headers=world.auth("audrey")
    )
    assert_problem(response, 422, "invalid_payload")


# --- audit: pages ----------------------------------------------------------------------------


def walk(client: TestClient, world: World, limit: int, **params: Any) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        extra = {"cursor": cursor} if cursor else {}
        body = read_audit(client, world, limit=limit, **params, **extra)
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not terminate"


@pytest.mark.parametrize(("records", "sizes"), [(7, [3, 3, 1]), (6, [3, 3]), (2, [2])])
def test_audit_pages_are_newest_first_without_duplicates_or_gaps(
    client: TestClient, world: World, records: int, sizes: list[int]
) -> None:
    for n in range(records):
        probe(client, world, f"page-{n}")
    pages = walk(client, world, 3, action="test.page")

    assert [len(page) for page in pages] == sizes
    flat = [item for page in pages for item in page]
    tags = [item["client_request_id"] for item in flat]
    assert tags == [f"page-{n}" for n in reversed(range(records))]
    seqs = [item["seq"] for item in flat]
    assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
    everything = read_audit(client, world, action="test.page", limit=500)["items"]
    assert [item["id"] for item in flat] == [item["id"] for item in everything]


def test_audit_pages_are_stable_while_new_records_arrive(client: TestClient, world: World) -> None:
    for n in range(5):
        probe(client, world, f"old-{n}")
    first = read_audit(client, world, limit=2, action="test.page")
    assert [i["client_request_id"] for i in first["items"]] == ["old-4", "old-3"]
    probe(client, world, "new-0")  # newer than the cursor: belongs to no later page

    rest: list[str] = []
    cursor = first["next_cursor"]
    while cursor:
        body = read_audit(client, world, limit=2, cursor=cursor, action="test.page")
        rest += [i["client_request_id"] for i in body["items"]]
        cursor = body["next_cursor"]
    assert [r for r in rest if r.startswith(("old-", "new-"))] == ["old-2", "old-1", "old-0"]
    newest = read_audit(client, world, limit=1, action="test.page")["items"][0]
    assert newest["client_request_id"] == "new-0"


@pytest.mark.parametrize("limit", ["0", "-1", "501", "10000", "ten", "1.5"])
def test_audit_limit_out_of_bounds_is_a_422_problem(
    client: TestClient, world: World, limit: str
) -> None:
    response = client.get("/api/v1/audit", params={"limit": limit}, headers=world.auth("audrey"))
    body = assert_problem(response, 422, "invalid_payload")
    assert any("limit" in error["loc"] for error in body["errors"])


@pytest.mark.parametrize("limit", [1, 500])
def test_audit_limit_bounds_are_inclusive(client: TestClient, world: World, limit: int) -> None:
    for n in range(2):
        probe(client, world, f"lim-{n}")
    body = read_audit(client, world, limit=limit, action="test.page")
    assert len(body["items"]) == min(limit, 2)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("not a cursor!", id="garbage"),
        pytest.param(_b64(b"x12"), id="wrong-prefix"),
        pytest.param(_b64(b"sabc"), id="not-a-number"),
        pytest.param(_b64(b"\xff\xfe"), id="not-utf8"),
        pytest.param("A" * 65, id="too-long"),
    ],
)
def test_bad_cursor_is_a_422_problem(client: TestClient, world: World, cursor: str) -> None:
    response = client.get("/api/v1/audit", params={"cursor": cursor}, headers=world.auth("audrey"))
    assert_problem(response, 422, "invalid_payload")


@pytest.mark.parametrize("number", [b"9223372036854775808", b"9" * 30])
def test_cursor_with_an_out_of_range_number_is_a_422_problem(
    client: TestClient, world: World, number: bytes
) -> None:
    cursor = _b64(b"s" + number)
    assert len(cursor) <= 64  # passes the query's length check
    response = client.get("/api/v1/audit", params={"cursor": cursor}, headers=world.auth("audrey"))
    assert_problem(response, 422, "invalid_payload")


@pytest.mark.parametrize("raw", [b"s-5", b"s 12", b"s1_000", b"s+7"])
def test_cursor_not_issued_by_the_api_is_a_422_problem(
    client: TestClient, world: World, raw: bytes
) -> None:
    response = client.get(
        "/api/v1/audit", params={"cursor": _b64(raw)}, headers=world.auth("audrey")
    )
    assert_problem(response, 422, "invalid_payload")


# --- audit: who may read ---------------------------------------------------------------------


def test_only_roles_holding_audit_read_may_read_the_trail(
    client: TestClient, db: Database, world: World, services: Services
) -> None:
    decided = 0
    for role in services.policy.roles():
        username = user_for(role)
        request_id = f"audit-read.{role}"
        response = client.get(
            "/api/v1/audit", headers={"X-Request-ID": request_id, **world.auth(username)}
        )
        if services.policy.has(frozenset({role}), Capability.AUDIT_READ):
            assert response.status_code == 200, (role, response.text)
            # Reading the trail is itself recorded (PCI DSS 10.2.1.3), as a success.
            [row] = audit_rows(db, request_id)
            assert (row.action, row.result) == ("audit.read", "succeeded")
        else:
            assert_problem(response, 403, "forbidden")
            [row] = audit_rows(db, request_id)
            assert (row.action, row.result, row.error_code) == ("audit.read", "denied", "forbidden")
            assert row.actor_id == world.user_ids[username]
            decided += 1
    assert decided >= 1


def test_support_agent_may_not_read_the_audit_trail(
    client: TestClient, db: Database, world: World
) -> None:
    response = client.get(
        "/api/v1/audit", headers={"X-Request-ID": "sa-audit", **world.auth("bob")}
    )
    assert_problem(response, 403, "forbidden")
    [row] = audit_rows(db, "sa-audit")
    assert (row.result, row.actor_id) == ("denied", world.user_ids["bob"])


def test_audit_read_needs_authentication(client: TestClient, db: Database) -> None:
    response = client.get("/api/v1/audit", headers={"X-Request-ID": "anon-audit"})
    assert_problem(response, 401, "unauthenticated")
    [row] = audit_rows(db, "anon-audit")
    assert (row.result, row.actor_id) == ("denied", None)


# --- record search ---------------------------------------------------------------------------


def customer_row(db: Database, customer_id: str) -> Customer:
    with db.reading() as session:
        customer = session.get(Customer, customer_id)
        assert customer is not None
        return customer


def search(client: TestClient, world: World, q: str, user: str = "alice") -> dict[str, Any]:
    response = client.get("/api/v1/search", params={"q": q}, headers=world.auth(user))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def customer_ids(body: dict[str, Any]) -> list[str]:
    return [c["id"] for c in body["customers"]]


def test_search_by_the_whole_email_in_any_case_and_never_a_prefix(
    client: TestClient, db: Database, world: World
) -> None:
    customer = world.summary.customers[5]
    email = str(customer["email"])
    assert customer_ids(search(client, world, email)) == [customer["id"]]
    assert customer_ids(search(client, world, email.upper())) == [customer["id"]]
    for prefix in (email.split("@")[0] + "@", email[:-1], email.split("@")[0]):
        assert search(client, world, prefix)["customers"] == [], prefix
    assert search(client, world, "nobody-here@example.org")["customers"] == []


def test_search_by_phone_in_any_typed_format(
    client: TestClient, db: Database, world: World
) -> None:
    customer = customer_row(db, world.customer(7))
    digits = customer.phone
    assert digits.isdigit() and len(digits) == 11
    typed = [
        digits,
        f"+{digits[0]} ({digits[1:4]}) {digits[4:7]}-{digits[7:]}",
        f"({digits[1:4]}) {digits[4:7]}-{digits[7:]}",
        f"{digits[1:4]}.{digits[4:7]}.{digits[7:]}",
        f"+{digits[0]} {digits[1:4]} {digits[4:7]} {digits[7:]}",
    ]
    for q in typed:
        body = search(client, world, q)
        assert customer_ids(body) == [customer.id], q
        # Results mask the number; the full phone never leaves in a search result.
        assert body["customers"][0]["phone"].endswith(digits[-4:])
        assert digits not in body["customers"][0]["phone"]


def test_search_by_name_substring_ignores_case(
    client: TestClient, db: Database, world: World
) -> None:
    customer = customer_row(db, world.customer(11))
    fragment = customer.name[1:-1]
    with db.reading() as session:
        names = {i: n for i, n in session.execute(select(Customer.id, Customer.name))}
    for q in (fragment, fragment.upper(), fragment.lower()):
        body = search(client, world, q)
        assert customer.id in customer_ids(body), q
        # The answer shows names masked; the match is on the whole name.
        assert all(fragment.lower() in names[i].lower() for i in customer_ids(body)), q
    full = search(client, world, customer.name.swapcase())
    assert all(names[i].lower() == customer.name.lower() for i in customer_ids(full))
    assert search(client, world, "zzzqqq-no-such-name")["customers"] == []


def test_search_by_customer_account_and_payment_id(
    client: TestClient, db: Database, world: World
) -> None:
    customer, account, payment = world.customer(2), world.account(4), world.payment(9)

    found = search(client, world, customer)
    assert customer_ids(found) == [customer]
    assert found["accounts"] == [] and found["payments"] == []

    found = search(client, world, account)
    assert [a["id"] for a in found["accounts"]] == [account]
    assert found["customers"] == [] and found["payments"] == []
    assert found["accounts"][0]["customer_id"] == world.summary.accounts[4]["customer_id"]

    found = search(client, world, payment)
    assert [p["id"] for p in found["payments"]] == [payment]
    assert found["payments"][0]["amount_minor"] == world.summary.payments[9]["amount_minor"]

    # IDs are found however they are typed.
    assert customer_ids(search(client, world, f"  {customer.lower()}  ")) == [customer]


def test_search_does_not_expose_system_accounts(
    client: TestClient, db: Database, world: World
) -> None:
    with db.reading() as session:
        system = session.scalars(
            select(Account.id).where(Account.kind == AccountKind.SYSTEM).limit(1)
        ).one()
    assert search(client, world, system)["accounts"] == []


def test_search_query_is_required(client: TestClient, world: World) -> None:
    response = client.get("/api/v1/search", headers=world.auth("alice"))
    assert_problem(response, 422, "invalid_payload")


def test_search_needs_records_search(
    client: TestClient, db: Database, world: World, services: Services, clock: FrozenClock
) -> None:
    # Every demo role may search, so a user with no role shows that deny is the default.
    with db.writing() as session:
        user = ensure_user(session, "nobody", "No Roles", (), now=clock.now())
        token = issue_token(session, user, name="t", now=clock.now(), ttl=timedelta(days=1))
        session.commit()
        user_id = user.id
    for role in services.policy.roles():
        allowed = services.policy.has(frozenset({role}), Capability.RECORDS_SEARCH)
        status = client.get(
            "/api/v1/search", params={"q": "a"}, headers=world.auth(user_for(role))
        ).status_code
        assert status == (200 if allowed else 403), role

    response = client.get(
        "/api/v1/search",
        params={"q": world.summary.customers[0]["email"]},
        headers={"X-Request-ID": "search-denied", "Authorization": f"Bearer {token.secret}"},
    )
    body = assert_problem(response, 403, "forbidden")
    assert "customers" not in body
    [row] = audit_rows(db, "search-denied")
    assert (row.action, row.result, row.actor_id) == ("records.search", "denied", user_id)


# --- health and OpenAPI ----------------------------------------------------------------------


def test_healthz_answers_without_credentials(
    client: TestClient, test_db: TestDatabase, services: Services
) -> None:
    response = client.get("/api/v1/healthz", headers={"X-Request-ID": "hz-1"})
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "request_id": response.headers["x-request-id"],
        "database": test_db.backend,
        "policy_version": services.policy.version,
    }


def test_openapi_lists_the_routes(client: TestClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    expected = {
        "/api/v1/actions": {"get"},
        "/api/v1/actions/{name}": {"post"},
        "/api/v1/audit": {"get"},
        "/api/v1/search": {"get"},
        "/api/v1/healthz": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), path
    assert not any(path.startswith("/bench") for path in paths)
    body_schema = paths["/api/v1/actions/{name}"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]
    assert {"target", "reason"} <= set(body_schema["required"])
