"""Input the database cannot store or the parser cannot survive: JSON nested too deep, NUL
characters and lone surrogates. Each is answered with a 4xx problem carrying its own code and
audited (with the offending value left out, so the record itself can be written), on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.core.errors import InvalidPayload
from opsgate.core.identity.actors import Origin
from opsgate.db.models import AuditRecord
from opsgate.web.services import Services
from tests.conftest import World
from tests.web.test_bounded_input import assert_problem, audited


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def envelope(world: World, **overrides: Any) -> dict[str, Any]:
    body = {
        "target": f"account:{world.account()}",
        "payload": {"reason_code": "fraud_suspected"},
        "reason": "ticket 5",
    }
    return body | overrides


def post_action(client: TestClient, world: World, content: str) -> httpx.Response:
    return client.post(
        "/api/v1/actions/account.block",
        content=content.encode("utf-8", "surrogatepass"),
        headers=world.auth("alice") | {"Content-Type": "application/json"},
    )


def assert_audited_refusal(services: Services, response: httpx.Response, status: int) -> None:
    body = assert_problem(response, status, "invalid_payload")
    record = audited(services, body["request_id"])
    assert record.result == "invalid"
    assert record.error_code == "invalid_payload"


@pytest.mark.parametrize("depth", [40, 1000, 100_000])
def test_a_deeply_nested_action_body_is_an_audited_422(
    client: TestClient, world: World, services: Services, depth: int
) -> None:
    content = json.dumps(envelope(world, payload={"reason_code": "x"}))
    content = content.replace('"x"', deep(depth))
    assert_audited_refusal(services, post_action(client, world, content), 422)


def test_a_deeply_nested_decision_body_is_an_audited_422_not_internal_error(
    client: TestClient, world: World, services: Services
) -> None:
    response = client.post(
        "/api/v1/approvals/apr_missing/approve",
        content='{"comment": ' + deep(1000) + "}",
        headers=world.auth("rita") | {"Content-Type": "application/json"},
    )
    assert_audited_refusal(services, response, 422)


@pytest.mark.parametrize(
    ("field", "value"),
    [("reason", "ticket\u0000 5"), ("target", "account:\u0000"), ("reason", "ticket \ud800")],
)
def test_nul_and_lone_surrogates_in_the_envelope_are_audited_422s(
    client: TestClient, world: World, services: Services, field: str, value: str
) -> None:
    content = json.dumps(envelope(world, **{field: value}))  # \u escapes, as clients send them
    response = post_action(client, world, content)
    assert_audited_refusal(services, response, 422)


def test_nul_in_a_decision_comment_is_an_audited_422(
    client: TestClient, world: World, services: Services
) -> None:
    response = client.post(
        "/api/v1/approvals/apr_missing/approve",
        json={"comment": "ok\u0000"},
        headers=world.auth("rita"),
    )
    assert_audited_refusal(services, response, 422)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/v1/search", {"q": "ab\u0000cd"}),
        ("/api/v1/audit", {"actor": "alice\u0000"}),
        ("/api/v1/audit", {"q": "\u0000"}),
    ],
)
def test_nul_in_a_query_parameter_is_an_audited_422(
    client: TestClient, world: World, services: Services, path: str, params: dict[str, str]
) -> None:
    response = client.get(path, params=params, headers=world.auth("audrey"))
    assert_audited_refusal(services, response, 422)


def test_nul_in_a_path_is_an_audited_422(
    client: TestClient, world: World, services: Services
) -> None:
    response = client.get("/api/v1/approvals/apr%00x", headers=world.auth("rita"))
    assert_audited_refusal(services, response, 422)


def test_nul_in_a_console_form_is_an_audited_422(client: TestClient, services: Services) -> None:
    response = client.post("/console/login", data={"username": "alice\u0000", "password": "x"})
    assert response.status_code == 422
    with services.db.reading() as session:
        codes = list(session.scalars(select(AuditRecord.error_code)))
    assert "invalid_payload" in codes


def test_the_gateway_refuses_unsafe_text_from_any_caller(services: Services, world: World) -> None:
    from opsgate.core.identity.actors import Actor

    actor = Actor(id=world.user_ids["alice"], name="Alice", roles=frozenset({"support_agent"}))
    origin = Origin(request_id="req_gateway_nul", ip=None, user_agent=None)
    for body in (
        envelope(world, reason="x\u0000y"),
        envelope(world, target="account:\udfff"),
        json.dumps(envelope(world, payload={"reason_code": "x"})).replace('"x"', deep(50)).encode(),
    ):
        with pytest.raises(InvalidPayload):
            services.gateway.submit(actor, "account.block", body, origin)
    with services.db.reading() as session:
        rows = list(
            session.scalars(select(AuditRecord).where(AuditRecord.request_id == "req_gateway_nul"))
        )
    assert [r.error_code for r in rows] == ["invalid_payload"] * 3
