"""opsgate.testing, dogfooded: the demo plugin's money-moving correction tested as a team
would test its own action, through the kit's `gate` (on the suite's SQLite and PostgreSQL
databases: `opsgate_database_url` is overridden with the demo-seeded `test_db`)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opsgate.testing import Gate
from tests.conftest import TestDatabase


@pytest.fixture
def opsgate_database_url(test_db: TestDatabase) -> str:
    return test_db.url


@pytest.fixture
def opsgate_plugins() -> str:
    return "demo"


def test_a_correction_waits_for_a_second_person_and_is_audited(
    gate: Gate, test_db: TestDatabase
) -> None:
    rita = gate.user("rita", roles=["risk_reviewer"])
    olga = gate.user("olga", roles=["ops_lead"])
    account = test_db.world.account(0)
    pending = gate.start(
        rita,
        "account.adjust_balance",
        f"account:{account}",
        {"amount_minor": 1500, "memo": "fee charged twice"},
    )
    assert pending.body()["status"] == "pending_approval"
    approval_id = pending.body()["approval_id"]

    with gate.refused("self_approval") as refusal:
        gate.approve(approval_id, rita)
    assert refusal.audit is not None
    assert refusal.audit.actor_name == rita.name
    with gate.refused("step_up_required"):
        gate.approve(approval_id, olga, step_up=False)

    done = gate.approve(approval_id, olga)
    assert done.status == "succeeded"
    assert done.execution_request_id is not None
    [executed] = gate.audit(done.execution_request_id)
    assert (executed.action, executed.result) == ("account.adjust_balance", "succeeded")
    assert executed.after is not None and executed.before is not None
    assert executed.after["balance_minor"] - executed.before["balance_minor"] == 1500
    assert gate.approval(approval_id).status == "succeeded"


def test_refused_fails_on_another_code(gate: Gate, test_db: TestDatabase) -> None:
    alice = gate.user("alice", roles=["support_agent"])
    account = test_db.world.account(0)
    payload = {"amount_minor": 1, "memo": "not mine to do"}
    with (
        pytest.raises(AssertionError, match="'forbidden', not 'self_approval'"),
        gate.refused("self_approval"),
    ):
        gate.start(alice, "account.adjust_balance", f"account:{account}", payload)


def test_refused_fails_when_nothing_is_refused(gate: Gate, test_db: TestDatabase) -> None:
    alice = gate.user("alice", roles=["support_agent"])
    account = test_db.world.account(0)
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"), gate.refused("forbidden"):
        gate.start(alice, "account.block", f"account:{account}", {"reason_code": "fraud_suspected"})


def test_the_gate_clock_expires_an_approval(gate: Gate, test_db: TestDatabase) -> None:
    rita = gate.user("rita", roles=["risk_reviewer"])
    olga = gate.user("olga", roles=["ops_lead"])
    target = f"account:{test_db.world.account(0)}"
    payload = {"amount_minor": 700, "memo": "late fee waived"}
    pending = gate.start(rita, "account.adjust_balance", target, payload)
    gate.clock.advance(timedelta(hours=25))
    with gate.refused("approval_expired"):
        gate.approve(pending.body()["approval_id"], olga)
    assert gate.approval(pending.body()["approval_id"]).status == "expired"
