"""Personal data around `/search` and `/customers/{id}` (the demo's customer view, a generic
record answer): answers masked as the console masks them (full data only through the
audited `customer.view_pii` action), no search term in the audit trail (a keyed hash, its
kind and length instead), and probing limited and flagged."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.core.audit.redaction import mask_email, mask_name, mask_phone
from opsgate.core.clock import FrozenClock
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.settings import Settings
from opsgate.web.services import Services
from opsgate_demo.models import Customer
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import TestDatabase, World
from tests.servers import Server, start_server

HASH_KEY = "search-term-key-for-tests-0123456789abcdef"
LIMIT = 8
MISSES = 3


@pytest.fixture
def settings(test_db: TestDatabase) -> Settings:
    return Settings(
        database_url=test_db.url,
        policy=DEMO_POLICY,
        audit_hash_key=HASH_KEY,
        search_limit_count=LIMIT,
        search_limit_window_minutes=10,
        search_flag_misses=MISSES,
    )


def keyed(term: str) -> str:
    return hmac.new(HASH_KEY.encode(), term.encode(), hashlib.sha256).hexdigest()


def customer_row(db: Database, n: int, world: World) -> Customer:
    with db.reading() as session:
        found = session.get(Customer, world.customer(n))
        assert found is not None
        return found


def get(client: TestClient, world: World, path: str, user: str, **params: Any) -> httpx.Response:
    return client.get(f"/api/v1{path}", params=params, headers=world.auth(user))


def audit_table(db: Database) -> list[dict[str, Any]]:
    """Every audit record, every column, as JSON would carry it."""
    with db.reading() as session:
        rows = session.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
        return [
            {column.key: getattr(row, column.key) for column in AuditRecord.__table__.columns}
            for row in rows
        ]


def search_records(db: Database) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.action == "records.search")
                .order_by(AuditRecord.seq)
            )
        )


def assert_shows_nothing_of(text: str, customer: Customer) -> None:
    assert customer.email not in text
    assert customer.phone not in text
    assert customer.name not in text


# --- answers are masked as the console masks them -------------------------------------------


@pytest.mark.parametrize("user", ["alice", "audrey", "adam"])
def test_search_answers_mask_name_email_and_phone_for_every_role(
    client: TestClient, db: Database, world: World, user: str
) -> None:
    customer = customer_row(db, 3, world)
    for q in (customer.email, customer.phone, customer.id, customer.phone[-4:]):
        response = get(client, world, "/search", user, q=q)
        assert response.status_code == 200, response.text
        [row] = [c for c in response.json()["customers"] if c["id"] == customer.id]
        assert row["name"] == mask_name(customer.name)
        assert row["email"] == mask_email(customer.email)
        assert row["phone"] == mask_phone(customer.phone)
        assert_shows_nothing_of(json.dumps(response.json()["customers"]), customer)


@pytest.mark.parametrize("user", ["alice", "audrey", "adam"])
def test_a_customer_read_masks_name_email_and_phone_for_every_role(
    client: TestClient, db: Database, world: World, user: str
) -> None:
    customer = customer_row(db, 4, world)
    response = get(client, world, f"/customers/{customer.id}", user)
    assert response.status_code == 200, response.text
    shown = {f["name"]: f["value"] for f in response.json()["fields"]}
    assert (shown["name"], shown["email"], shown["phone"]) == (
        mask_name(customer.name),
        mask_email(customer.email),
        mask_phone(customer.phone),
    )
    assert_shows_nothing_of(response.text, customer)


def test_full_personal_data_only_through_the_audited_reveal(
    client: TestClient, db: Database, world: World
) -> None:
    customer = customer_row(db, 5, world)
    body = {"target": f"customer:{customer.id}", "payload": {}, "reason": "caller passed ID&V"}
    revealed = client.post(
        "/api/v1/actions/customer.view_pii", json=body, headers=world.auth("alice")
    )
    assert revealed.status_code == 200, revealed.text
    assert revealed.json()["result"] == {
        "name": customer.name,
        "email": customer.email,
        "phone": customer.phone,
    }
    refused = client.post(
        "/api/v1/actions/customer.view_pii", json=body, headers=world.auth("audrey")
    )
    assert (refused.status_code, refused.json()["code"]) == (403, "forbidden")
    assert_shows_nothing_of(refused.text, customer)


# --- the audit trail keeps a keyed hash of the term, never the term ------------------------


def test_the_search_term_never_reaches_the_audit_trail(
    client: TestClient, db: Database, world: World
) -> None:
    customer = customer_row(db, 6, world)
    digits = customer.phone
    typed = {
        "email": (customer.email.upper(), customer.email),
        "phone": (f"+{digits[0]} ({digits[1:4]}) {digits[4:7]}-{digits[7:]}", digits),
        "last4": (digits[-4:], digits[-4:]),
        "name": (customer.name, customer.name.lower()),
        "id": (customer.id.lower(), customer.id),
    }
    for q, _normalised in typed.values():
        assert get(client, world, "/search", "alice", q=q).status_code == 200
    missed = "nobody.at.all@example.org"
    assert get(client, world, "/search", "alice", q=missed).status_code == 200

    trail = json.dumps(audit_table(db), default=str)
    for secret in (customer.email, customer.email.upper(), digits, digits[1:], missed):
        assert secret not in trail
    assert customer.name not in trail and customer.name.lower() not in trail
    assert typed["phone"][0] not in trail

    rows = search_records(db)
    assert len(rows) == 6
    for row, (kind, (q, normalised)) in zip(rows, typed.items(), strict=False):
        assert row.parameters is not None
        assert row.parameters["term"] == {
            "kind": kind,
            "length": len(normalised),
            "hmac_sha256": keyed(normalised),
        }, kind
        assert "q" not in row.parameters
        assert q not in json.dumps(row.parameters) and normalised not in json.dumps(row.parameters)
    assert rows[-1].parameters is not None
    assert rows[-1].parameters["term"]["hmac_sha256"] == keyed(missed)
    assert rows[-1].parameters["found"] == {"customers": 0, "accounts": 0, "payments": 0}


def test_the_same_person_typed_two_ways_has_one_hash(
    client: TestClient, db: Database, world: World
) -> None:
    """An investigator asks "who looked this number up?" with one keyed hash."""
    digits = customer_row(db, 7, world).phone
    for q in (digits, f"+{digits}", f"({digits[1:4]}) {digits[4:7]}-{digits[7:]}"):
        assert get(client, world, "/search", "alice", q=q).status_code == 200
    hashes = {row.parameters["term"]["hmac_sha256"] for row in search_records(db) if row.parameters}
    assert hashes == {keyed(digits)}


# --- probing is limited and flagged -------------------------------------------------------


def test_searches_past_the_window_limit_are_refused_429_and_audited(
    client: TestClient, db: Database, world: World, clock: FrozenClock
) -> None:
    email = customer_row(db, 8, world).email
    for n in range(LIMIT):
        response = get(client, world, "/search", "alice", q=email)
        assert response.status_code == 200, n
    refused = get(client, world, "/search", "alice", q=email)
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["code"] == "limit_exceeded"
    assert problem["request_id"] == refused.headers["x-request-id"]
    assert email not in refused.text
    [limited] = [row for row in search_records(db) if row.result == "limited"]
    assert (limited.error_code, limited.actor_id) == ("limit_exceeded", world.user_ids["alice"])
    assert limited.request_id == problem["request_id"]
    assert limited.parameters is not None and limited.parameters["term"]["kind"] == "email"
    assert limited.flags is not None and limited.flags["search_probing"]["searches"] == LIMIT
    assert email not in json.dumps(audit_table(db), default=str)

    # Another person is not slowed down by alice; alice searches again once the window passed.
    assert get(client, world, "/search", "bob", q=email).status_code == 200
    clock.advance(timedelta(minutes=10, seconds=1))
    assert get(client, world, "/search", "alice", q=email).status_code == 200


def test_customer_reads_do_not_use_up_the_search_limit(
    client: TestClient, db: Database, world: World
) -> None:
    for _ in range(LIMIT + 2):
        assert get(client, world, f"/customers/{world.customer(9)}", "alice").status_code == 200
    assert get(client, world, "/search", "alice", q=world.customer(9)).status_code == 200


def test_repeated_misses_are_flagged_as_probing(
    client: TestClient, db: Database, world: World
) -> None:
    digits = customer_row(db, 10, world).phone
    assert get(client, world, "/search", "alice", q=digits).status_code == 200  # a hit
    probes = [str(d) + digits[-4:] for d in range(MISSES)]  # the suffix attack, one by one
    for probe in probes:
        assert get(client, world, "/search", "alice", q=probe).json()["customers"] == []
    rows = search_records(db)
    assert [bool(row.flags) for row in rows] == [False] * MISSES + [True]
    flag = rows[-1].flags["search_probing"] if rows[-1].flags else {}
    assert flag == {
        "searches": MISSES + 1,
        "misses": MISSES,
        "window_minutes": 10,
        "flag_misses": MISSES,
        "limit": LIMIT,
    }


def test_in_monitor_mode_searches_past_the_limit_run_and_are_flagged(
    client: TestClient, services: Services, db: Database, world: World
) -> None:
    services.settings = services.settings.model_copy(update={"search_limit_mode": "monitor"})
    for _ in range(LIMIT + 2):
        assert get(client, world, "/search", "alice", q=world.customer(11)).status_code == 200
    flagged = [row.flags for row in search_records(db) if row.flags]
    assert len(flagged) == 2
    assert all(flag["search_probing"]["over_limit"] is True for flag in flagged)


def test_parallel_searches_cannot_squeeze_past_the_limit(client: TestClient, world: World) -> None:
    def one(_n: int) -> int:
        return get(client, world, "/search", "alice", q="smith").status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(3 * LIMIT)))
    assert statuses.count(200) == LIMIT, statuses
    assert statuses.count(429) == 2 * LIMIT, statuses


@pytest.fixture
def two_servers(test_db: TestDatabase, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    env = {"OPSGATE_SEARCH_LIMIT_COUNT": str(LIMIT), "OPSGATE_AUDIT_HASH_KEY": HASH_KEY}
    first = start_server(test_db.url, tmp_path / "a.log", **env)
    try:
        second = start_server(test_db.url, tmp_path / "b.log", **env)
    except BaseException:
        first.stop()
        raise
    yield first, second
    first.stop()
    second.stop()


@pytest.mark.multiprocess
def test_the_limit_holds_across_server_processes(
    two_servers: tuple[Server, Server], test_db: TestDatabase
) -> None:
    world = test_db.world
    urls = [server.base_url for server in two_servers]

    def one(n: int) -> int:
        return httpx.get(
            f"{urls[n % 2]}/api/v1/search",
            params={"q": "smith"},
            headers=world.auth("bob"),
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(3 * LIMIT)))
    assert statuses.count(200) == LIMIT, statuses
    assert statuses.count(429) == 2 * LIMIT, statuses
