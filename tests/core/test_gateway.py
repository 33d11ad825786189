"""The gateway's guarantees (DESIGN.md invariants 1, 2 and 8) on both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from opsgate.core.actions.gateway import Gateway
from opsgate.core.actions.policy import parse_policy
from opsgate.core.actions.registry import ActionSpec, Outcome, Payload, Registry, RiskClass
from opsgate.core.errors import (
    DomainError,
    DomainRejected,
    Forbidden,
    InvalidPayload,
    TargetNotFound,
    UnknownAction,
)
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.db.models import AuditRecord
from opsgate_demo.models import Customer, Note
from opsgate_demo.plugin import register
from tests.conftest import World

ROLES = """
[roles.clerk]
description = "may do everything"
[roles.viewer]
description = "may do nothing"
[capabilities."audit.read"]
allow = []
[capabilities."metrics.read"]
allow = []
[capabilities."records.search"]
allow = []
"""


def policy_text(registry: Registry) -> str:
    """Every registered action allowed to clerk, nothing else, no other controls."""
    entries = "".join(f'[actions."{name}"]\nallow = ["clerk"]\n' for name in registry.names())
    return ROLES + entries


class Probe(Payload):
    mode: str = "ok"


class Spy:
    """A handler that records its calls and can misbehave on request."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, ctx: Any, customer: Customer, payload: Probe) -> Outcome:
        self.calls += 1
        customer.status = "restricted"  # a real change, so rollback is observable
        ctx.session.add(
            Note(
                id=f"not_probe{self.calls}",
                customer_id=customer.id,
                author_id=ctx.actor.id,
                author_name=ctx.actor.name,
                text="probe",
                created_at=ctx.now,
            )
        )
        ctx.session.flush()
        if payload.mode == "refuse":
            raise DomainError("probe_refused", "The probe refused.")
        if payload.mode == "crash":
            raise RuntimeError("secret database detail")
        return Outcome({"calls": self.calls})


@pytest.fixture
def spy() -> Spy:
    return Spy()


@pytest.fixture
def gateway(db: Database, spy: Spy, clock: Any) -> Gateway:
    registry = Registry()
    register(registry)
    registry.add(ActionSpec("test.probe", "Probe", "test", RiskClass.WRITE, "customer", Probe, spy))
    return Gateway(db, registry, parse_policy(policy_text(registry), registry), clock)


CLERK = Actor(id="usr_clerk", name="Clerk", roles=frozenset({"clerk"}), credential_id="tok_1")
VIEWER = Actor(id="usr_viewer", name="Viewer", roles=frozenset({"viewer"}))


def audit_rows(db: Database, request_id: str) -> list[AuditRecord]:
    with db.reading() as session:
        return list(
            session.scalars(select(AuditRecord).where(AuditRecord.request_id == request_id))
        )


def count(db: Database, model: Any) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def body(world: World, **overrides: Any) -> dict[str, Any]:
    return {
        "target": f"customer:{world.customer()}",
        "payload": {},
        "reason": "testing",
    } | overrides


def test_success_commits_change_and_exactly_one_audit_record(
    gateway: Gateway, db: Database, world: World, spy: Spy
) -> None:
    result = gateway.submit(CLERK, "test.probe", body(world), Origin("req-ok", "10.0.0.1", "ua"))

    assert result.result == {"calls": 1}
    [row] = audit_rows(db, "req-ok")
    assert (row.id, row.result, row.action) == (result.audit_id, "succeeded", "test.probe")
    assert (row.actor_id, row.credential_id, row.origin_ip) == ("usr_clerk", "tok_1", "10.0.0.1")
    assert row.reason == "testing" and row.parameters == {"mode": "ok"}
    assert row.before is not None and row.after is not None
    assert (row.before["status"], row.after["status"]) == ("active", "restricted")
    assert row.policy_version == gateway.policy.version
    with db.reading() as session:
        assert session.get(Customer, world.customer()).status == "restricted"  # type: ignore[union-attr]


def test_forbidden_never_reaches_handler_and_is_audited(
    gateway: Gateway, db: Database, world: World, spy: Spy
) -> None:
    with pytest.raises(Forbidden):
        gateway.submit(VIEWER, "test.probe", body(world), Origin("req-deny"))
    assert spy.calls == 0
    [row] = audit_rows(db, "req-deny")
    assert (row.result, row.error_code, row.actor_id) == ("denied", "forbidden", "usr_viewer")


def test_permission_is_checked_before_the_payload(
    gateway: Gateway, db: Database, world: World, spy: Spy
) -> None:
    # A caller without permission learns nothing about the payload's shape.
    with pytest.raises(Forbidden):
        gateway.submit(VIEWER, "test.probe", b"{not json", Origin("req-deny2"))
    assert [r.error_code for r in audit_rows(db, "req-deny2")] == ["forbidden"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"[]",
        b'{"target": "customer:x", "payload": {}}',
        b'{"target": "customer:x", "payload": {}, "reason": "   "}',
        b'{"target": "nocolon", "payload": {}, "reason": "r"}',
        b'{"target": "account:acc_1", "payload": {}, "reason": "r"}',
        b'{"target": "customer:x", "payload": {"mode": 5}, "reason": "r"}',
        b'{"target": "customer:x", "payload": {"extra": 1}, "reason": "r"}',
        b'{"target": "customer:x", "payload": {}, "reason": "r", "sneaky": true}',
    ],
)
def test_invalid_input_never_reaches_handler_and_is_audited(
    gateway: Gateway, db: Database, spy: Spy, raw: bytes
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        gateway.submit(CLERK, "test.probe", raw, Origin("req-invalid"))
    assert caught.value.errors
    assert spy.calls == 0
    [row] = audit_rows(db, "req-invalid")
    assert (row.result, row.error_code) == ("invalid", "invalid_payload")


def test_unknown_action_is_audited(gateway: Gateway, db: Database, world: World) -> None:
    with pytest.raises(UnknownAction):
        gateway.submit(CLERK, "money.print", body(world), Origin("req-unknown"))
    [row] = audit_rows(db, "req-unknown")
    assert (row.action, row.result, row.error_code) == ("money.print", "invalid", "unknown_action")


def test_unknown_target_is_audited_and_handler_not_called(
    gateway: Gateway, db: Database, spy: Spy, world: World
) -> None:
    with pytest.raises(TargetNotFound):
        gateway.submit(
            CLERK, "test.probe", body(world, target="customer:cus_missing"), Origin("req-404")
        )
    assert spy.calls == 0
    [row] = audit_rows(db, "req-404")
    assert (row.target, row.error_code) == ("customer:cus_missing", "target_not_found")


def test_domain_error_rolls_back_partial_effects_and_audits_once(
    gateway: Gateway, db: Database, world: World, spy: Spy
) -> None:
    notes_before = count(db, Note)
    with pytest.raises(DomainRejected) as caught:
        gateway.submit(CLERK, "test.probe", body(world, payload={"mode": "refuse"}), Origin("r-x"))
    assert caught.value.reason == "probe_refused"
    assert spy.calls == 1
    assert count(db, Note) == notes_before
    with db.reading() as session:
        assert session.get(Customer, world.customer()).status == "active"  # type: ignore[union-attr]
    [row] = audit_rows(db, "r-x")
    assert (row.result, row.error_code) == ("failed", "domain_rejected:probe_refused")
    assert row.before is None and row.after is None


def test_crash_rolls_back_and_audits_without_leaking_the_message(
    gateway: Gateway, db: Database, world: World, spy: Spy
) -> None:
    notes_before = count(db, Note)
    with pytest.raises(RuntimeError):
        gateway.submit(CLERK, "test.probe", body(world, payload={"mode": "crash"}), Origin("r-c"))
    assert count(db, Note) == notes_before
    [row] = audit_rows(db, "r-c")
    assert (row.result, row.error_code) == ("failed", "internal_error")
    assert "secret" not in (row.error_message or "")


def test_audit_failure_rolls_back_the_change(
    gateway: Gateway, db: Database, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Invariant 2: the change and its audit record commit together or not at all.
    import opsgate.core.actions.gateway as gateway_module

    def broken_record(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("audit store unavailable")

    monkeypatch.setattr(gateway_module, "record", broken_record)
    notes_before = count(db, Note)
    with pytest.raises(RuntimeError):
        gateway.submit(CLERK, "test.probe", body(world), Origin("r-a"))
    assert count(db, Note) == notes_before
    with db.reading() as session:
        assert session.get(Customer, world.customer()).status == "active"  # type: ignore[union-attr]


def test_every_committed_note_has_exactly_one_audit_record(
    gateway: Gateway, db: Database, world: World
) -> None:
    for n in range(3):
        gateway.submit(
            CLERK,
            "customer.add_note",
            body(world, payload={"text": f"note {n}"}),
            Origin(f"req-note-{n}"),
        )
    with db.reading() as session:
        notes = list(session.scalars(select(Note).where(Note.author_id == CLERK.id)))
        audits = list(
            session.scalars(select(AuditRecord).where(AuditRecord.action == "customer.add_note"))
        )
    assert len(notes) == 3
    assert sorted(a.outcome["note_id"] for a in audits if a.outcome) == sorted(n.id for n in notes)
