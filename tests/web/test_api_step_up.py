"""Step-up for money-moving approvals through the API (core/approvals/step_up.py, `/auth/step-up`):
a 30-day bearer token alone does not approve money; a fresh, bound, single-use grant does."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.core.clock import FrozenClock
from opsgate.core.identity import passwords, tokens
from opsgate.core.identity.users import find_user
from opsgate.db.models import ApprovalRequest, AuditRecord, StepUpGrant
from opsgate.web.services import Services
from tests.conftest import World

PASSWORD = "correct horse battery staple 12"


@pytest.fixture(autouse=True)
def approver_passwords(services: Services) -> None:
    with services.db.writing() as session:
        for username in ("rita", "raj"):
            user = find_user(session, username)
            assert user is not None
            passwords.set_password(session, user, PASSWORD, now=services.clock.now())
        session.commit()


def money_request(client: TestClient, world: World, key: str = "reverse-1") -> str:
    payment = next(
        p
        for p in world.summary.payments
        if p["currency"] == "USD" and 20_000 < p["amount_minor"] < 400_000
    )
    held = client.post(
        "/api/v1/actions/payment.reverse",
        json={
            "target": f"payment:{payment['id']}",
            "payload": {"amount_minor": 15_000, "reason_code": "duplicate_charge"},
            "reason": "charged twice",
        },
        headers=world.auth("alice") | {"Idempotency-Key": key},
    )
    assert held.status_code == 202, held.text
    return str(held.json()["approval_id"])


def step_up(client: TestClient, headers: dict[str, str], password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/step-up", json={"password": password}, headers=headers)


def grant(client: TestClient, world: World, who: str = "rita") -> str:
    response = step_up(client, world.auth(who))
    assert response.status_code == 201, response.text
    return str(response.json()["step_up"])


def approve(
    client: TestClient, world: World, approval_id: str, who: str = "rita", **headers: str
) -> Any:
    return client.post(
        f"/api/v1/approvals/{approval_id}/approve",
        json={"comment": "checked"},
        headers=world.auth(who) | headers,
    )


def status(services: Services, approval_id: str) -> str:
    with services.db.reading() as session:
        row = session.get(ApprovalRequest, approval_id)
        assert row is not None
        return row.status


def refusals(services: Services, approval_id: str) -> list[AuditRecord]:
    with services.db.reading() as session:
        return list(
            session.scalars(
                select(AuditRecord)
                .where(
                    AuditRecord.approval_id == approval_id,
                    AuditRecord.error_code == "step_up_required",
                )
                .order_by(AuditRecord.seq)
            )
        )


def test_a_money_approval_with_a_token_alone_is_refused_and_audited(
    client: TestClient, world: World, services: Services
) -> None:
    approval_id = money_request(client, world)
    response = approve(client, world, approval_id)
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "step_up_required"
    assert body["step_up"] == "no_grant"
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert status(services, approval_id) == "pending"
    [refused] = refusals(services, approval_id)
    assert (refused.action, refused.result) == ("payment.reverse", "denied")
    assert refused.actor_id == world.user_ids["rita"]
    assert refused.outcome == {"decision": "approve", "step_up": "no_grant"}
    assert refused.request_id == body["request_id"]


def test_a_money_approval_with_a_fresh_step_up_executes(
    client: TestClient, world: World, services: Services
) -> None:
    approval_id = money_request(client, world)
    issued = step_up(client, world.auth("rita"))
    assert issued.status_code == 201, issued.text
    body = issued.json()
    assert body["step_up"].startswith("ogs_")
    assert body["header"] == "X-Step-Up"
    response = approve(client, world, approval_id, **{"X-Step-Up": body["step_up"]})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded"
    with services.db.reading() as session:
        [stored] = session.scalars(select(StepUpGrant)).all()
        assert stored.secret_hash != body["step_up"]
        assert body["step_up"] not in (stored.secret_hash, stored.id)
        assert stored.used_for == approval_id
        [audited] = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "auth.step_up")
        ).all()
        assert audited.actor_id == world.user_ids["rita"]
        assert audited.outcome["grant_id"] == stored.id  # type: ignore[index]


def test_a_step_up_is_spent_on_one_approval(client: TestClient, world: World) -> None:
    first, second = money_request(client, world, "k1"), money_request(client, world, "k2")
    secret = grant(client, world)
    assert approve(client, world, first, **{"X-Step-Up": secret}).status_code == 200
    again = approve(client, world, second, **{"X-Step-Up": secret})
    assert again.status_code == 401
    assert (again.json()["code"], again.json()["step_up"]) == ("step_up_required", "used")


def test_an_expired_step_up_is_refused(
    client: TestClient, world: World, services: Services, clock: FrozenClock
) -> None:
    approval_id = money_request(client, world)
    secret = grant(client, world)
    clock.advance(timedelta(seconds=services.settings.step_up_seconds + 1))
    response = approve(client, world, approval_id, **{"X-Step-Up": secret})
    assert response.status_code == 401
    assert response.json()["step_up"] == "expired"
    assert status(services, approval_id) == "pending"
    assert [r.outcome for r in refusals(services, approval_id)] == [
        {"decision": "approve", "step_up": "expired"}
    ]


def test_another_persons_step_up_is_refused(
    client: TestClient, world: World, services: Services
) -> None:
    approval_id = money_request(client, world)
    rajs = grant(client, world, "raj")
    response = approve(client, world, approval_id, "rita", **{"X-Step-Up": rajs})
    assert response.status_code == 401
    assert response.json()["step_up"] == "other_user"
    assert status(services, approval_id) == "pending"
    # Raj's grant was not spent by the refusal: Raj may still use it.
    assert approve(client, world, approval_id, "raj", **{"X-Step-Up": rajs}).status_code == 200


def test_a_step_up_is_bound_to_the_token_that_asked_for_it(
    client: TestClient, world: World, services: Services
) -> None:
    approval_id = money_request(client, world)
    with services.db.writing() as session:
        rita = find_user(session, "rita")
        assert rita is not None
        other = tokens.issue_token(
            session, rita, name="laptop", now=services.clock.now(), ttl=timedelta(days=1)
        )
        session.commit()
    from_other_token = grant(client, world)  # asked with the test token
    response = client.post(
        f"/api/v1/approvals/{approval_id}/approve",
        json={"comment": "checked"},
        headers={"Authorization": f"Bearer {other.secret}", "X-Step-Up": from_other_token},
    )
    assert response.status_code == 401
    assert response.json()["step_up"] == "other_token"


def test_a_forged_step_up_is_refused(client: TestClient, world: World) -> None:
    approval_id = money_request(client, world)
    response = approve(client, world, approval_id, **{"X-Step-Up": "ogs_" + "A" * 43})
    assert response.status_code == 401
    assert response.json()["step_up"] == "unknown_grant"


def test_a_wrong_password_gets_no_step_up_and_is_audited(
    client: TestClient, world: World, services: Services
) -> None:
    response = step_up(client, world.auth("rita"), "not the password")
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"
    with services.db.reading() as session:
        assert session.scalars(select(StepUpGrant)).all() == []
        [denied] = session.scalars(
            select(AuditRecord).where(AuditRecord.action == "auth.reauth")
        ).all()
        assert (denied.result, denied.error_code) == ("denied", "bad_credentials")
        assert denied.actor_id == world.user_ids["rita"]


def test_rejecting_a_money_request_needs_no_step_up(
    client: TestClient, world: World, services: Services
) -> None:
    approval_id = money_request(client, world)
    response = client.post(
        f"/api/v1/approvals/{approval_id}/reject",
        json={"comment": "not a duplicate"},
        headers=world.auth("rita"),
    )
    assert response.status_code == 200, response.text
    assert status(services, approval_id) == "rejected"


def test_the_rule_lives_in_the_control_layer_not_the_route(
    client: TestClient, world: World, services: Services
) -> None:
    from opsgate.core.errors import StepUpRequired
    from opsgate.core.identity.actors import Actor, Origin

    approval_id = money_request(client, world)
    rita = Actor(id=world.user_ids["rita"], name="Rita", roles=frozenset({"risk_reviewer"}))
    with pytest.raises(StepUpRequired):
        services.approvals.decide(approval_id, rita, "approve", "ok", Origin("core-call"))
    assert status(services, approval_id) == "pending"
    [refused] = refusals(services, approval_id)
    assert refused.outcome == {"decision": "approve", "step_up": "no_credential"}


def test_the_openapi_documents_step_up(client: TestClient) -> None:
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    assert "post" in paths["/api/v1/auth/step-up"]
    approve_op = paths["/api/v1/approvals/{approval_id}/approve"]["post"]
    assert "x-step-up" in {p["name"].lower() for p in approve_op["parameters"]}
    assert "step_up_required" in approve_op["responses"]["401"]["description"]
