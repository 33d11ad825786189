"""The approvals API: the inbox, the detail a reviewer needs, decisions, metrics."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from opsgate.core.clock import FrozenClock
from tests.conftest import World


def request_unblock(client: TestClient, world: World, who: str = "rita", n: int = 0) -> str:
    account = world.account(n)
    blocked = client.post(
        "/api/v1/actions/account.block",
        json={
            "target": f"account:{account}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "suspicious",
        },
        headers=world.auth("alice"),
    )
    assert blocked.status_code == 200, blocked.text
    response = client.post(
        "/api/v1/actions/account.unblock",
        json={"target": f"account:{account}", "payload": {}, "reason": "verified by phone"},
        headers=world.auth(who) | {"X-Request-ID": f"unblock-{n}"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending_approval"
    assert body["request_id"] == response.headers["x-request-id"]
    return str(body["approval_id"])


def test_detail_shows_everything_a_reviewer_needs(client: TestClient, world: World) -> None:
    approval_id = request_unblock(client, world)
    response = client.get(f"/api/v1/approvals/{approval_id}", headers=world.auth("olga"))
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    assert body["requester"]["id"] == world.user_ids["rita"]
    assert body["reason"] == "verified by phone"
    assert body["action_label"] == "Unblock account"
    assert body["payload"] == {}
    assert body["target_snapshot"]["status"] == "blocked"
    assert body["target_current"]["status"] == "blocked"
    assert body["target_changed"] is False
    assert body["proposed_change"]["after"]["status"] == "active"
    assert body["decisions"] == []
    assert 0 < body["time_left_seconds"] <= 24 * 3600
    assert [h["result"] for h in body["history"]] == ["approval_requested"]
    assert body["viewer"] == {"is_requester": False, "may_decide": True}
    assert body["request_id"] == response.headers["X-Request-ID"]


def test_requester_sees_no_decision_right_and_cannot_decide(
    client: TestClient, world: World
) -> None:
    approval_id = request_unblock(client, world)
    body = client.get(f"/api/v1/approvals/{approval_id}", headers=world.auth("rita")).json()
    assert body["viewer"] == {"is_requester": True, "may_decide": False}
    forged = client.post(f"/api/v1/approvals/{approval_id}/approve", headers=world.auth("rita"))
    assert forged.status_code == 403
    assert forged.json()["code"] == "self_approval"


def test_approve_executes_and_returns_the_result(client: TestClient, world: World) -> None:
    approval_id = request_unblock(client, world)
    response = client.post(
        f"/api/v1/approvals/{approval_id}/approve",
        json={"comment": "checked the call recording"},
        headers=world.auth("olga") | {"X-Request-ID": "approve-http"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "succeeded"
    assert body["request_id"] == response.headers["x-request-id"]
    assert body["execution_request_id"] not in (None, body["request_id"])
    assert body["result"]["status"] == "active"
    detail = client.get(f"/api/v1/approvals/{approval_id}", headers=world.auth("audrey")).json()
    assert detail["status"] == "succeeded"
    assert detail["execution"]["request_id"] == body["execution_request_id"]
    assert [h["result"] for h in detail["history"]] == [
        "approval_requested",
        "approved",
        "succeeded",
    ]
    audit = client.get(
        "/api/v1/audit",
        params={"request_id": detail["original_request_id"]},
        headers=world.auth("audrey"),
    ).json()["items"]
    assert {item["result"] for item in audit} >= {"approval_requested", "succeeded"}


def test_reject_without_comment_is_a_problem_and_changes_nothing(
    client: TestClient, world: World
) -> None:
    approval_id = request_unblock(client, world)
    response = client.post(
        f"/api/v1/approvals/{approval_id}/reject", json={}, headers=world.auth("olga")
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "invalid_payload"
    detail = client.get(f"/api/v1/approvals/{approval_id}", headers=world.auth("olga")).json()
    assert (detail["status"], detail["decisions"]) == ("pending", [])


def test_problem_codes_of_decisions(client: TestClient, world: World, clock: FrozenClock) -> None:
    from datetime import timedelta

    first = request_unblock(client, world, n=0)
    rejected = client.post(
        f"/api/v1/approvals/{first}/reject", json={"comment": "no"}, headers=world.auth("olga")
    )
    assert rejected.json()["status"] == "rejected"
    again = client.post(f"/api/v1/approvals/{first}/approve", headers=world.auth("raj"))
    assert (again.status_code, again.json()["code"]) == (409, "approval_not_pending")

    second = request_unblock(client, world, n=1)
    clock.advance(timedelta(days=2))
    late = client.post(f"/api/v1/approvals/{second}/approve", headers=world.auth("olga"))
    assert (late.status_code, late.json()["code"]) == (409, "approval_expired")
    assert late.json()["approval_id"] == second

    missing = client.get("/api/v1/approvals/apr_missing", headers=world.auth("olga"))
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")


def test_inbox_visibility(client: TestClient, world: World) -> None:
    approval_id = request_unblock(client, world)

    def ids(username: str, **params: str) -> list[str]:
        response = client.get("/api/v1/approvals", params=params, headers=world.auth(username))
        assert response.status_code == 200
        return [item["id"] for item in response.json()["items"]]

    assert ids("olga", status="pending") == [approval_id]  # may approve
    assert ids("rita") == [approval_id]  # the requester
    assert ids("audrey") == [approval_id]  # audit.read
    assert ids("alice") == []  # neither
    assert ids("olga", status="succeeded") == []
    hidden = client.get(f"/api/v1/approvals/{approval_id}", headers=world.auth("alice"))
    assert (hidden.status_code, hidden.json()["code"]) == (403, "forbidden")


def test_metrics_count_decisions_and_rubber_stamps(client: TestClient, world: World) -> None:
    approved = request_unblock(client, world, n=0)
    client.get(f"/api/v1/approvals/{approved}", headers=world.auth("olga"))
    client.post(f"/api/v1/approvals/{approved}/approve", headers=world.auth("olga"))
    rejected = request_unblock(client, world, n=1)
    client.post(
        f"/api/v1/approvals/{rejected}/reject", json={"comment": "no"}, headers=world.auth("raj")
    )
    response = client.get("/api/v1/approvals/metrics", headers=world.auth("audrey"))
    assert response.status_code == 200
    [unblock] = [a for a in response.json()["actions"] if a["action"] == "account.unblock"]
    assert (unblock["requested"], unblock["approved"], unblock["rejected"]) == (2, 1, 1)
    assert unblock["approval_rate"] == 0.5
    assert unblock["decisions_within_10s_of_opening"] == 1  # olga opened and decided at once
    assert unblock["decisions_without_opening"] == 1  # raj never opened it
    assert unblock["time_to_decision_seconds"]["median"] == 0
    approvers = {p["id"]: p for p in unblock["approvers"]}
    assert approvers[world.user_ids["olga"]]["approved"] == 1
    assert approvers[world.user_ids["raj"]]["rejected"] == 1
    denied = client.get("/api/v1/approvals/metrics", headers=world.auth("alice"))
    assert denied.status_code == 403
