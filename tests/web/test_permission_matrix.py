"""Every role x every registered action, over HTTP, against what the policy file says.

Roles and actions come from the loaded policy and the registry; the expected decision is read
from the policy file itself (not through `Policy`), so the check is independent of the code
that enforces it. One representative demo user per role keeps it quick.
"""

from __future__ import annotations

import tomllib
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate.web.services import Services
from opsgate_demo.models import Account, AccountKind, AccountStatus
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World


def policy_file(services: Services) -> dict[str, Any]:
    return tomllib.loads(services.settings.policy.read_text(encoding="utf-8"))


def representatives(services: Services) -> dict[str, str]:
    """role -> the first demo user holding it; every policy role must have one."""
    chosen: dict[str, str] = {}
    for username, _name, roles in DEMO_USERS:
        for role in roles:
            chosen.setdefault(role, username)
    missing = set(services.policy.roles()) - set(chosen)
    assert not missing, f"no demo user holds {missing}"
    return {role: chosen[role] for role in services.policy.roles()}


def expected_allowed(services: Services) -> dict[str, set[str]]:
    """action -> roles allowed by the policy file (deny by default)."""
    actions = policy_file(services).get("actions", {})
    return {name: set(actions.get(name, {}).get("allow", [])) for name in services.registry.names()}


def targets(db: Database, world: World) -> dict[str, str]:
    with db.reading() as session:
        account = session.scalars(
            select(Account.id)
            .where(Account.kind == AccountKind.CUSTOMER, Account.status == AccountStatus.ACTIVE)
            .limit(1)
        ).one()
    return {
        "customer": f"customer:{world.customer()}",
        "account": f"account:{account}",
        "payment": f"payment:{world.payment()}",
        "user": f"user:{world.user_ids['bob']}",
    }


def test_policy_and_registry_are_not_trivial(services: Services) -> None:
    # Guards the matrix below against passing vacuously.
    allowed = expected_allowed(services)
    assert len(services.policy.roles()) >= 2 and len(allowed) >= 2
    assert any(allowed.values()), "no role may start any action"
    assert any(set(services.policy.roles()) - roles for roles in allowed.values())


def test_every_role_and_action_is_decided_as_the_policy_file_says(
    client: TestClient, db: Database, world: World, services: Services
) -> None:
    users = representatives(services)
    allowed = expected_allowed(services)
    target_of = targets(db, world)
    kinds = {spec.target_kind for spec in services.registry.specs()}
    assert kinds <= set(target_of), f"no test target for kinds {kinds - set(target_of)}"
    expected: dict[tuple[str, str], str] = {}
    actual: dict[tuple[str, str], str] = {}
    for role, username in users.items():
        for action in services.registry.names():
            spec = services.registry.get(action)
            assert spec is not None
            request_id = f"matrix.{role}.{action}"
            response = client.post(
                f"/api/v1/actions/{action}",
                headers={"X-Request-ID": request_id, **world.auth(username)},
                json={"target": target_of[spec.target_kind], "payload": {}, "reason": "matrix"},
            )
            with db.reading() as session:
                rows = list(
                    session.scalars(
                        select(AuditRecord).where(AuditRecord.client_request_id == request_id)
                    )
                )
            assert len(rows) == 1, (role, action, response.status_code)
            [row] = rows
            assert row.actor_id == world.user_ids[username]
            assert row.action == action
            key = (role, action)
            expected[key] = "allowed" if role in allowed[action] else "forbidden"
            if response.status_code == 403:
                assert response.json()["code"] == "forbidden"
                assert (row.result, row.error_code) == ("denied", "forbidden")
                actual[key] = "forbidden"
            else:
                assert row.result != "denied", (key, row.error_code)
                actual[key] = "allowed"
    assert actual == expected


def test_action_list_shows_exactly_what_each_role_may_start(
    client: TestClient, world: World, services: Services
) -> None:
    allowed = expected_allowed(services)
    for role, username in representatives(services).items():
        response = client.get("/api/v1/actions", headers=world.auth(username))
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        names = [item["name"] for item in items]
        assert names == sorted(a for a, roles in allowed.items() if role in roles), role
        for item in items:
            spec = services.registry.get(item["name"])
            assert spec is not None
            assert item["label"] == spec.label and item["label"]
            assert item["payload_schema"] == spec.payload_schema()
            assert item["payload_schema"]["type"] == "object"
            assert item["target_kind"] == spec.target_kind
