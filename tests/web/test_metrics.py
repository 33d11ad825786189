"""`GET /metrics` (and `/api/v1/metrics`): what a scraper sees after real requests, who may
scrape, and several `opsgate serve` processes summed in one scrape.

Metrics are process-global: assertions compare scrapes before and after, never absolute values.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from opsgate.core.actions.policy import Capability
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, AuditRecord
from opsgate.web.services import Services
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import TestDatabase, World
from tests.core.test_metrics import Samples, labels
from tests.servers import Server, start_server

PATHS = ("/metrics", "/api/v1/metrics")
PROBLEM = "application/problem+json"


def scrape(client: TestClient, world: World, path: str = "/metrics") -> Samples:
    response = client.get(path, headers=world.auth("prom"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return Samples(response.text)


def act(
    client: TestClient,
    world: World,
    user: str,
    action: str,
    target: str,
    payload: dict[str, Any],
    key: str | None = None,
) -> httpx.Response:
    headers = world.auth(user) | ({"Idempotency-Key": key} if key else {})
    return client.post(
        f"/api/v1/actions/{action}",
        json={"target": target, "payload": payload, "reason": "metrics over http"},
        headers=headers,
    )


def audit_count(db: Database, **where: str) -> int:
    stmt = select(func.count()).select_from(AuditRecord)
    for column, value in where.items():
        stmt = stmt.where(getattr(AuditRecord, column) == value)
    with db.reading() as session:
        return int(session.scalar(stmt) or 0)


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body = response.json()
    assert (body["status"], body["code"]) == (status, code)
    assert body["request_id"] == response.headers["x-request-id"]


def user_for(role: str) -> str:
    return next(username for username, _n, roles in DEMO_USERS if role in roles)


def test_scrape_counts_real_requests_by_action_and_result(client: TestClient, world: World) -> None:
    customer, account = f"customer:{world.customer()}", f"account:{world.account()}"
    before = scrape(client, world)
    statuses = [
        act(client, world, "alice", "customer.add_note", customer, {"text": "a"}).status_code,
        act(client, world, "alice", "customer.add_note", customer, {"text": "b"}, "k1").status_code,
        act(client, world, "alice", "customer.add_note", customer, {"text": "b"}, "k1").status_code,
        act(client, world, "audrey", "account.block", account, {}).status_code,
        act(client, world, "alice", "account.block", account, {"reason_code": "?"}).status_code,
        act(
            client, world, "alice", "account.block", account, {"reason_code": "fraud_suspected"}
        ).status_code,
        act(client, world, "rita", "account.unblock", account, {}).status_code,
        act(client, world, "alice", "no.such_action", account, {}).status_code,
    ]
    after = scrape(client, world, "/api/v1/metrics")

    assert statuses == [200, 200, 200, 403, 422, 200, 202, 404]
    expected = {
        labels(action="customer.add_note", result="succeeded"): 2.0,
        labels(action="customer.add_note", result="replayed"): 1.0,
        labels(action="account.block", result="forbidden"): 1.0,
        labels(action="account.block", result="invalid_payload"): 1.0,
        labels(action="account.block", result="succeeded"): 1.0,
        labels(action="account.unblock", result="pending_approval"): 1.0,
        labels(action="unknown", result="unknown_action"): 1.0,
    }
    assert after.delta(before, "opsgate_actions_total") == expected
    assert after.delta(before, "opsgate_action_duration_seconds_count") == expected
    assert "no.such_action" not in after.label_values()


def test_both_paths_answer_the_same_exposition(client: TestClient, world: World) -> None:
    families = []
    for path in PATHS:
        samples = scrape(client, world, path)
        families.append({name for name, _labels in samples.values})
    assert families[0] == families[1]
    assert {
        "opsgate_actions_in_progress",
        "opsgate_approvals_pending",
        "opsgate_audit_append_duration_seconds_count",
    } <= families[0]


def test_openmetrics_when_the_scraper_asks_for_it(client: TestClient, world: World) -> None:
    response = client.get(
        "/metrics",
        headers=world.auth("prom") | {"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")


def test_pending_approvals_gauge_matches_the_database(
    client: TestClient, db: Database, world: World
) -> None:
    def in_db() -> Counter[str]:
        with db.reading() as session:
            rows = session.scalars(select(ApprovalRequest)).all()
            return Counter(row.action for row in rows if row.status == "pending")

    def gauge() -> dict[str, float]:
        series = scrape(client, world).series("opsgate_approvals_pending")
        return {dict(key)["action"]: value for key, value in series.items() if value}

    start = gauge()
    assert start == dict(in_db())
    for n in (0, 1):
        account = f"account:{world.account(n)}"
        blocked = act(
            client, world, "alice", "account.block", account, {"reason_code": "compliance_hold"}
        )
        assert blocked.status_code == 200, blocked.text
        held = act(client, world, "rita", "account.unblock", account, {})
        assert held.status_code == 202, held.text
    assert gauge() == dict(in_db())
    assert gauge()["account.unblock"] == start.get("account.unblock", 0) + 2

    approval_id = held.json()["approval_id"]
    decided = client.post(f"/api/v1/approvals/{approval_id}/approve", headers=world.auth("olga"))
    assert decided.status_code == 200, decided.text
    assert gauge() == dict(in_db())
    assert gauge()["account.unblock"] == start.get("account.unblock", 0) + 1


@pytest.mark.parametrize("path", PATHS)
def test_scrape_without_a_token_is_a_401_problem_and_audited(
    client: TestClient, db: Database, path: str
) -> None:
    response = client.get(path, headers={"X-Request-ID": "scrape-anon"})
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "opsgate_" not in response.text
    denied = audit_count(db, client_request_id="scrape-anon", action="auth.token", result="denied")
    assert denied == 1


def test_only_roles_holding_metrics_read_may_scrape(
    client: TestClient, db: Database, world: World, services: Services
) -> None:
    decided = {}
    for role in services.policy.roles():
        request_id = f"scrape.{role}"
        response = client.get(
            "/metrics", headers=world.auth(user_for(role)) | {"X-Request-ID": request_id}
        )
        allowed = services.policy.has(frozenset({role}), Capability.METRICS_READ)
        decided[role] = allowed
        if allowed:
            assert response.status_code == 200, (role, response.text)
            # A successful scrape leaves no audit record (it would flood the trail).
            assert audit_count(db, request_id=request_id) == 0
        else:
            assert_problem(response, 403, "forbidden")
            assert "opsgate_" not in response.text
            assert audit_count(db, client_request_id=request_id, action="metrics.read") == 1
            assert audit_count(db, client_request_id=request_id, result="denied") == 1
    # Deny by default: the monitoring role may, an operator may not.
    assert decided["monitor"] and not decided["support_agent"]


# --- several processes ------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_two_processes_sharing_a_multiprocess_dir_add_up_in_one_scrape(
    test_db: TestDatabase, tmp_path: Path
) -> None:
    world = test_db.world
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    first = start_server(test_db.url, tmp_path / "a.log", **env)
    try:
        second = start_server(test_db.url, tmp_path / "b.log", **env)
    except BaseException:
        first.stop()
        raise

    def scrape_of(server: Server) -> Samples:
        response = httpx.get(f"{server.base_url}/metrics", headers=world.auth("prom"))
        assert response.status_code == 200, response.text
        return Samples(response.text)

    def notes(server: Server, count: int) -> None:
        for n in range(count):
            response = httpx.post(
                f"{server.base_url}/api/v1/actions/customer.add_note",
                json={
                    "target": f"customer:{world.customer(n)}",
                    "payload": {"text": f"from {server.base_url}"},
                    "reason": "multiprocess metrics",
                },
                headers=world.auth("alice"),
            )
            assert response.status_code == 200, response.text

    succeeded = {"action": "customer.add_note", "result": "succeeded"}
    try:
        before = scrape_of(first)
        notes(first, 2)
        notes(second, 3)
        seen_by_first, seen_by_second = scrape_of(first), scrape_of(second)
        for seen in (seen_by_first, seen_by_second):
            assert (
                seen.get("opsgate_actions_total", **succeeded)
                - before.get("opsgate_actions_total", **succeeded)
                == 5
            )
        second_pid = second.process.pid
        assert list(shared.glob(f"gauge_livesum_{second_pid}.db"))
    finally:
        second.stop()
    try:
        # The stopped process's live gauge is gone; what it counted still counts.
        assert not list(shared.glob(f"gauge_livesum_{second_pid}.db"))
        after_exit = scrape_of(first)
        assert after_exit.get("opsgate_actions_total", **succeeded) == seen_by_first.get(
            "opsgate_actions_total", **succeeded
        )
        assert after_exit.get("opsgate_actions_in_progress") == 0
    finally:
        first.stop()
