"""Refused authentications: counted per source address and minute, one audit record per
window with its count, and answered 429 past a limit; none is lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.core.clock import FrozenClock
from opsgate.core.identity.auth_refusals import Refusals
from opsgate.db.models import AuditRecord
from opsgate.settings import Settings
from opsgate.web.app import create_app
from opsgate.web.services import Services
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import TestDatabase, World

REQUESTS = 600
LIMIT = 60
REFUSALS = ("auth.token", "auth.refusals", "auth.session")


@pytest.fixture
def settings(test_db: TestDatabase) -> Settings:
    return Settings(database_url=test_db.url, policy=DEMO_POLICY, auth_refusals_per_minute=LIMIT)


def refusal_records(services: Services) -> list[AuditRecord]:
    with services.db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(AuditRecord.action.in_(REFUSALS))
                .order_by(AuditRecord.seq)
            )
        )


def counted(records: list[AuditRecord]) -> int:
    """How many refusals the records account for (one each, unless they carry a count)."""
    return sum(int((r.outcome or {}).get("refusals", 1)) for r in records)


def hammer(client: TestClient, n: int, headers: dict[str, str] | None = None) -> list[int]:
    def one(i: int) -> int:
        bearer = {"Authorization": f"Bearer ogt_guess{i}"} if i % 2 else {}
        return client.get("/api/v1/actions", headers=bearer | (headers or {})).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(n)))


def test_600_refused_requests_make_a_handful_of_records_whose_counts_add_up(
    client: TestClient, services: Services, clock: FrozenClock
) -> None:
    statuses = hammer(client, REQUESTS)
    assert statuses.count(401) == LIMIT
    assert statuses.count(429) == REQUESTS - LIMIT
    clock.advance(timedelta(seconds=61))
    assert client.get("/api/v1/actions").status_code == 401  # a new minute: counted afresh
    records = refusal_records(services)
    assert len(records) <= 4, [(r.action, r.outcome) for r in records]
    assert counted(records) == REQUESTS + 1


def test_a_refusal_past_the_limit_has_its_own_code(client: TestClient) -> None:
    hammer(client, LIMIT)
    answer = client.get("/api/v1/actions", headers={"Authorization": "Bearer ogt_nope"})
    assert answer.status_code == 429
    assert answer.json()["code"] == "authentication_rate_limited"
    assert answer.json()["request_id"] == answer.headers["X-Request-ID"]


def test_the_last_minutes_count_is_written_when_the_app_stops(
    settings: Settings, services: Services, clock: FrozenClock
) -> None:
    with TestClient(create_app(settings, services, configure_logs=False)) as client:
        hammer(client, 25)
    # No later refusal came; stopping the app flushed what the window still held.
    assert counted(refusal_records(services)) == 25


def test_the_background_flush_writes_closed_windows_once(
    client: TestClient, services: Services, clock: FrozenClock
) -> None:
    hammer(client, 30)
    clock.advance(timedelta(seconds=61))
    refusals = Refusals(services.gateway, LIMIT)
    assert refusals.flush() == 1
    assert refusals.flush() == 0
    records = refusal_records(services)
    assert counted(records) == 30
    assert [r.action for r in records] == ["auth.token", "auth.refusals"]
    summary = records[-1]
    assert summary.parameters is not None and summary.parameters["source"] == "testclient"
    assert summary.outcome == {"refusals": 29, "rate_limited_in_window": 0}


def test_the_limit_answers_429_from_exactly_the_next_refusal(
    client: TestClient, services: Services
) -> None:
    statuses = hammer(client, LIMIT)
    assert 429 not in statuses
    assert client.get("/api/v1/actions").status_code == 429
    records = refusal_records(services)
    assert {r.origin_ip for r in records} == {"testclient"}


def test_a_valid_token_still_works_from_a_source_past_the_limit(
    client: TestClient, world: World
) -> None:
    hammer(client, LIMIT + 5)
    assert client.get("/api/v1/actions", headers=world.auth("alice")).status_code == 200


def test_anonymous_console_session_refusals_are_aggregated_too(
    client: TestClient, services: Services
) -> None:
    client.cookies.set("opsgate_session", "forged.value", path="/console")

    def forged(_: Any) -> int:
        return client.get("/console", follow_redirects=False).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(forged, range(40)))
    assert statuses.count(303) == 40
    records = refusal_records(services)
    assert len(records) == 1 and counted(records) == 1  # the rest wait in the window's count


def test_forged_console_cookies_past_the_limit_get_a_429_page(client: TestClient) -> None:
    client.cookies.set("opsgate_session", "forged.value", path="/console")
    for _ in range(LIMIT):
        assert client.get("/console", follow_redirects=False).status_code == 303
    page = client.get("/console", follow_redirects=False)
    assert page.status_code == 429
    assert "Too many refused sign-ins from this address" in page.text
