"""Prometheus metrics of the control layer (core/metrics.py) on SQLite and PostgreSQL.

Metrics are process-global and other tests move them too: every assertion compares a scrape
taken before with one taken after, never an absolute value (except the pending approvals,
which come from the test's own database).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, update

from opsgate.core import metrics
from opsgate.core.approvals.gate import Decision
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import Forbidden, InvalidPayload, StaleApproval, UnknownAction
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, AuditRecord
from opsgate.web.services import Services
from opsgate_demo.models import Account
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}
Key = tuple[str, frozenset[tuple[str, str]]]


class Samples:
    """One parsed scrape: sample name and labels -> value."""

    def __init__(self, text: str) -> None:
        self.values: dict[Key, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: value for (n, labels), value in self.values.items() if n == name}

    def label_values(self) -> set[str]:
        return {value for _n, labels in self.values for _k, value in labels}

    def delta(self, before: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
        """Series of `name` that changed since `before`, by how much."""
        changed = {}
        for labels, value in self.series(name).items():
            moved = value - before.values.get((name, labels), 0.0)
            if moved:
                changed[labels] = moved
        return changed


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def scrape(services: Services) -> Samples:
    body, content_type = metrics.scrape(services.db, services.registry.names())
    assert content_type.startswith("text/plain")
    return Samples(body.decode())


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


def origin(request_id: str) -> Origin:
    return Origin(request_id=request_id, ip="127.0.0.1", user_agent="pytest")


def note(world: World, n: int = 0) -> dict[str, Any]:
    return {
        "target": f"customer:{world.customer(n)}",
        "payload": {"text": "called back"},
        "reason": "metrics test",
    }


def request_unblock(services: Services, world: World, n: int) -> str:
    account = f"account:{world.account(n)}"
    services.gateway.submit(
        actor(world, "alice"),
        "account.block",
        {"target": account, "payload": {"reason_code": "fraud_suspected"}, "reason": "odd"},
        origin(f"m-block-{n}"),
    )
    result = services.gateway.submit(
        actor(world, "rita"),
        "account.unblock",
        {"target": account, "payload": {}, "reason": "verified by phone"},
        origin(f"m-unblock-{n}"),
    )
    assert result.approval_id is not None
    return result.approval_id


def pending_in_db(db: Database) -> Counter[str]:
    """Pending requests per action, counted in Python from every row (not the collector's
    query)."""
    with db.reading() as session:
        rows = session.scalars(select(ApprovalRequest)).all()
        return Counter(row.action for row in rows if row.status == "pending")


# --- actions through Gateway.submit -----------------------------------------------------------


def test_submit_is_counted_and_timed_by_action_and_result(services: Services, world: World) -> None:
    before = scrape(services)
    services.gateway.submit(actor(world, "alice"), "customer.add_note", note(world), origin("m1"))
    with pytest.raises(Forbidden):
        services.gateway.submit(
            actor(world, "audrey"), "customer.add_note", note(world), origin("m2")
        )
    with pytest.raises(InvalidPayload):
        services.gateway.submit(
            actor(world, "alice"), "customer.add_note", {"target": "x"}, origin("m3")
        )
    after = scrape(services)

    expected = {
        labels(action="customer.add_note", result="succeeded"): 1.0,
        labels(action="customer.add_note", result="forbidden"): 1.0,
        labels(action="customer.add_note", result="invalid_payload"): 1.0,
    }
    assert after.delta(before, "opsgate_actions_total") == expected
    assert after.delta(before, "opsgate_action_duration_seconds_count") == expected
    timed = after.delta(before, "opsgate_action_duration_seconds_sum")
    assert set(timed) == set(expected)
    assert all(seconds > 0 for seconds in timed.values())


def test_unknown_action_names_share_one_label(services: Services, world: World) -> None:
    names = ["no.such_action", "<script>alert(1)</script>", "x" * 300]
    before = scrape(services)
    for name in names:
        with pytest.raises(UnknownAction):
            services.gateway.submit(actor(world, "alice"), name, note(world), origin("m-u"))
    after = scrape(services)

    assert after.delta(before, "opsgate_actions_total") == {
        labels(action="unknown", result="unknown_action"): 3.0
    }
    assert not set(names) & after.label_values()


def test_a_result_outside_the_known_set_is_counted_as_unknown(services: Services) -> None:
    before = scrape(services)
    metrics.observe_action("customer.add_note", "made-up result", 0.01)
    after = scrape(services)
    assert after.delta(before, "opsgate_actions_total") == {
        labels(action="customer.add_note", result="unknown"): 1.0
    }


def test_actions_in_progress_counts_a_running_submit_even_when_it_fails(
    services: Services, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    during: list[float] = []

    def running(*_args: Any) -> None:
        during.append(scrape(services).get("opsgate_actions_in_progress"))
        raise RuntimeError("handler crashed")

    monkeypatch.setattr(services.gateway, "_submit", running)
    before = scrape(services)
    with pytest.raises(RuntimeError):
        services.gateway.submit(
            actor(world, "alice"), "customer.add_note", note(world), origin("p")
        )
    after = scrape(services)

    assert during == [before.get("opsgate_actions_in_progress") + 1]
    assert after.get("opsgate_actions_in_progress") == before.get("opsgate_actions_in_progress")
    assert after.delta(before, "opsgate_actions_total") == {
        labels(action="customer.add_note", result="internal_error"): 1.0
    }


# --- approvals --------------------------------------------------------------------------------


def test_time_to_decision_is_observed_at_quorum_and_at_rejection(
    services: Services, world: World, clock: FrozenClock
) -> None:
    approved = request_unblock(services, world, 0)
    rejected = request_unblock(services, world, 1)
    before = scrape(services)
    clock.advance(timedelta(minutes=90))
    services.approvals.decide(
        approved, actor(world, "olga"), Decision.APPROVE, None, origin("m-ok")
    )
    clock.advance(timedelta(minutes=10))
    services.approvals.decide(
        rejected, actor(world, "olga"), Decision.REJECT, "not convinced", origin("m-no")
    )
    after = scrape(services)

    name = "opsgate_approval_time_to_decision_seconds"
    assert after.delta(before, f"{name}_count") == {
        labels(action="account.unblock", decision="approved"): 1.0,
        labels(action="account.unblock", decision="rejected"): 1.0,
    }
    assert after.delta(before, f"{name}_sum") == {
        labels(action="account.unblock", decision="approved"): 5400.0,
        labels(action="account.unblock", decision="rejected"): 6000.0,
    }
    bucket = after.delta(before, f"{name}_bucket")
    assert labels(action="account.unblock", decision="approved", le="7200.0") in bucket
    assert labels(action="account.unblock", decision="approved", le="3600.0") not in bucket
    # Only the approved request ran.
    assert after.delta(before, "opsgate_approved_executions_total") == {
        labels(action="account.unblock", result="succeeded"): 1.0
    }


def test_a_stale_execution_is_counted_by_its_problem_code(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world, 0)
    with db.writing() as session:
        account = session.get(Account, world.account(0))
        assert account is not None
        account.blocked_reason = "compliance_hold"  # someone else changed the target
        session.commit()
    before = scrape(services)
    with pytest.raises(StaleApproval):
        services.approvals.decide(
            approval_id, actor(world, "olga"), Decision.APPROVE, None, origin("m-st")
        )
    after = scrape(services)
    assert after.delta(before, "opsgate_approved_executions_total") == {
        labels(action="account.unblock", result="stale_approval"): 1.0
    }


def test_only_final_decisions_are_observed() -> None:
    with pytest.raises(ValueError, match="not a final decision"):
        metrics.observe_decision("account.unblock", "pending", 1.0)


def test_pending_approvals_gauge_matches_the_database(
    services: Services, db: Database, world: World
) -> None:
    def gauge() -> dict[str, float]:
        return {
            dict(series)["action"]: value
            for series, value in scrape(services).series("opsgate_approvals_pending").items()
        }

    start = gauge()
    assert set(start) == set(services.registry.names())  # a series for every action, 0 too
    assert {a: n for a, n in start.items() if n} == dict(pending_in_db(db))

    first = request_unblock(services, world, 0)
    request_unblock(services, world, 1)
    assert gauge()["account.unblock"] == start["account.unblock"] + 2
    services.approvals.decide(first, actor(world, "olga"), Decision.APPROVE, None, origin("m-a"))
    now = gauge()
    assert now["account.unblock"] == start["account.unblock"] + 1
    assert {a: n for a, n in now.items() if n} == dict(pending_in_db(db))


def test_pending_requests_of_an_action_no_longer_registered_count_as_unknown(
    services: Services, db: Database, world: World
) -> None:
    approval_id = request_unblock(services, world, 0)
    before = metrics.PendingApprovals(db, services.registry.names()).counts()
    with db.writing() as session:
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == approval_id)
            .values(action="retired.action")
        )
        session.commit()
    after = metrics.PendingApprovals(db, services.registry.names()).counts()
    assert "retired.action" not in after
    assert after["unknown"] == before.get("unknown", 0) + 1
    assert after["account.unblock"] == before["account.unblock"] - 1


# --- audit appends and backend calls ----------------------------------------------------------


def test_every_audit_append_is_timed_once(services: Services, db: Database, world: World) -> None:
    def records() -> int:
        with db.reading() as session:
            return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)

    rows_before, before = records(), scrape(services)
    request_unblock(services, world, 0)  # two audited actions
    with pytest.raises(Forbidden):  # and an audited refusal
        services.gateway.submit(
            actor(world, "audrey"), "customer.add_note", note(world), origin("m-f")
        )
    rows_after, after = records(), scrape(services)

    appended = after.get("opsgate_audit_append_duration_seconds_count") - before.get(
        "opsgate_audit_append_duration_seconds_count"
    )
    assert appended == rows_after - rows_before >= 3
    assert after.get("opsgate_audit_append_duration_seconds_sum") > before.get(
        "opsgate_audit_append_duration_seconds_sum"
    )


def test_backend_calls_are_counted_by_outcome(services: Services) -> None:
    before = scrape(services)
    for outcome in metrics.BackendOutcome:
        metrics.observe_backend_call("core_banking", "account.block", outcome, 0.25)
    metrics.observe_backend_call("core_banking", "account.block", "unavailable", 0.5)
    with pytest.raises(ValueError, match="exploded"):
        metrics.observe_backend_call("core_banking", "account.block", "exploded", 0.1)
    after = scrape(services)

    def series(outcome: str) -> frozenset[tuple[str, str]]:
        return labels(backend="core_banking", action="account.block", outcome=outcome)

    assert after.delta(before, "opsgate_backend_calls_total") == {
        series("succeeded"): 1.0,
        series("rejected"): 1.0,
        series("unavailable"): 2.0,
        series("unknown"): 1.0,
    }
    assert after.delta(before, "opsgate_backend_call_duration_seconds_sum") == pytest.approx(
        {
            series("succeeded"): 0.25,
            series("rejected"): 0.25,
            series("unavailable"): 0.75,
            series("unknown"): 0.25,
        }
    )
