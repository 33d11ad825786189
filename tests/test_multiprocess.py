"""Several `opsgate serve` processes on one database serve the same data."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import TestDatabase
from tests.servers import Server, two_servers_on

pytestmark = pytest.mark.multiprocess


@pytest.fixture
def two_servers(test_db: TestDatabase, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    with two_servers_on(test_db.url, tmp_path) as servers:
        yield servers


def test_two_processes_serve_the_same_data(
    two_servers: tuple[Server, Server], test_db: TestDatabase
) -> None:
    a, b = two_servers
    world = test_db.world
    written = httpx.post(
        f"{a.base_url}/api/v1/actions/account.block",
        json={
            "target": f"account:{world.account(3)}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "multi-process check",
        },
        headers=world.auth("alice") | {"X-Request-ID": "mp-block-1"},
    )
    assert written.status_code == 200, written.text

    seen = httpx.get(
        f"{b.base_url}/api/v1/audit",
        params={"request_id": written.headers["X-Request-ID"]},
        headers=world.auth("audrey"),
    )
    assert seen.status_code == 200
    [item] = seen.json()["items"]
    assert item["id"] == written.json()["audit_id"]

    # The second process refuses a second block: it sees the first one's state.
    again = httpx.post(
        f"{b.base_url}/api/v1/actions/account.block",
        json={
            "target": f"account:{world.account(3)}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "multi-process check",
        },
        headers=world.auth("bob"),
    )
    assert again.status_code == 409
    assert again.json()["code"] == "domain_rejected"


def test_concurrent_writes_through_both_processes_are_all_recorded(
    two_servers: tuple[Server, Server], test_db: TestDatabase
) -> None:
    servers = two_servers
    world = test_db.world

    def add_note(n: int) -> httpx.Response:
        server = servers[n % 2]
        return httpx.post(
            f"{server.base_url}/api/v1/actions/customer.add_note",
            json={
                "target": f"customer:{world.customer(n % 5)}",
                "payload": {"text": f"note {n}"},
                "reason": "concurrency",
            },
            headers=world.auth("alice") | {"X-Request-ID": f"mp-note-{n}"},
            timeout=30,
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(add_note, range(40)))
    assert [r.status_code for r in responses] == [200] * 40

    audit = httpx.get(
        f"{servers[0].base_url}/api/v1/audit",
        params={"action": "customer.add_note", "limit": 100},
        headers=world.auth("audrey"),
    ).json()["items"]
    assert sorted(item["client_request_id"] for item in audit) == sorted(
        f"mp-note-{n}" for n in range(40)
    )
    assert len({item["request_id"] for item in audit}) == 40


def test_request_id_reaches_the_server_log_line(
    two_servers: tuple[Server, Server], test_db: TestDatabase
) -> None:
    a, _ = two_servers
    world = test_db.world
    token = world.tokens["alice"]
    response = httpx.post(
        f"{a.base_url}/api/v1/actions/customer.add_note",
        json={
            "target": f"customer:{world.customer()}",
            "payload": {"text": "logged"},
            "reason": "log check",
        },
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": "mp-log-1"},
    )
    request_id = response.headers["X-Request-ID"]
    assert request_id != "mp-log-1"
    a.stop()  # flush and close the log
    lines = [line for line in a.log_lines() if line.get("request_id") == request_id]
    assert all(line["client_request_id"] == "mp-log-1" for line in lines)
    action = next(line for line in lines if line["event"] == "action")
    assert (action["action"], action["result"]) == ("customer.add_note", "succeeded")
    assert action["actor"] == world.user_ids["alice"]
    assert any(line["event"] == "http_request" for line in lines)
    assert token not in a.log_path.read_text()


def test_concurrent_approvers_across_processes_execute_once(
    two_servers: tuple[Server, Server], test_db: TestDatabase
) -> None:
    from datetime import UTC, datetime, timedelta

    from opsgate.core.identity import tokens
    from opsgate.core.identity.users import ensure_user
    from opsgate.db.engine import Database

    servers = two_servers
    world = test_db.world
    account = world.account(5)
    blocked = httpx.post(
        f"{servers[0].base_url}/api/v1/actions/account.block",
        json={
            "target": f"account:{account}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "suspicious",
        },
        headers=world.auth("alice"),
    )
    assert blocked.status_code == 200, blocked.text
    requested = httpx.post(
        f"{servers[1].base_url}/api/v1/actions/account.unblock",
        json={"target": f"account:{account}", "payload": {}, "reason": "verified"},
        headers=world.auth("olga"),
    )
    assert requested.status_code == 202, requested.text
    approval_id = requested.json()["approval_id"]

    db = Database(test_db.url)
    now = datetime.now(UTC)
    secrets: list[str] = []
    with db.writing() as session:
        for n in range(20):
            user = ensure_user(
                session, f"mp-reviewer{n}", f"Reviewer {n}", ("risk_reviewer",), now=now
            )
            issued = tokens.issue_token(session, user, name="t", now=now, ttl=timedelta(hours=1))
            secrets.append(issued.secret)
        session.commit()
    db.dispose()

    def approve(n: int) -> httpx.Response:
        return httpx.post(
            f"{servers[n % 2].base_url}/api/v1/approvals/{approval_id}/approve",
            headers={"Authorization": f"Bearer {secrets[n]}"},
            timeout=60,
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(approve, range(20)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 19, [r.text for r in responses]
    assert {r.json()["code"] for r in responses if r.status_code == 409} == {"approval_not_pending"}
    [winner] = [r.json() for r in responses if r.status_code == 200]
    assert winner["status"] == "succeeded"
    audit = httpx.get(
        f"{servers[0].base_url}/api/v1/audit",
        params={"action": "account.unblock", "result": "succeeded"},
        headers=world.auth("audrey"),
    ).json()["items"]
    assert [item["execution_request_id"] for item in audit] == [winner["execution_request_id"]]
