"""The demo actions, run through the control layer as an operator would run them."""

from __future__ import annotations

import re
from datetime import timedelta
from itertools import count
from typing import Any

import pytest
from sqlalchemy import select

from opsgate.core.actions.gateway import ActionResult, Gateway
from opsgate.core.actions.policy import parse_policy
from opsgate.core.clock import FrozenClock
from opsgate.core.errors import DomainRejected, Forbidden, InvalidPayload, TargetNotFound
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.web.services import Services
from opsgate_demo.models import (
    Account,
    AccountKind,
    AccountStatus,
    Customer,
    CustomerStatus,
    KycStatus,
    Note,
)
from opsgate_demo.plugin import DEMO_POLICY
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World

_request_numbers = count()


def actor(world: World, username: str) -> Actor:
    [(name, roles)] = [(n, r) for u, n, r in DEMO_USERS if u == username]
    return Actor(id=world.user_ids[username], name=name, roles=frozenset(roles))


def submit(
    gateway: Gateway, who: Actor, action: str, target: str, payload: dict[str, Any] | None = None
) -> ActionResult:
    body = {"target": target, "payload": payload or {}, "reason": "customer called in"}
    origin = Origin(f"req-actions-{next(_request_numbers)}", "10.1.2.3", "pytest")
    return gateway.submit(who, action, body, origin)


def ungated(services: Services) -> Gateway:
    """The demo policy without its approval rules: the handler runs at once. (Approvals are
    tested on their own; here only the handlers' transitions matter.)"""
    text = DEMO_POLICY.read_text(encoding="utf-8")
    text = re.sub(r'^\[actions\."[^"]+"\.approval\]\n(?:[^\[\n].*\n|\n)*', "", text, flags=re.M)
    assert ".approval]" not in text
    policy = parse_policy(text, services.registry)
    return Gateway(services.db, services.registry, policy, services.clock)


def customer(db: Database, ident: str) -> Customer:
    with db.reading() as session:
        found = session.get(Customer, ident)
        assert found is not None
        return found


def account(db: Database, ident: str) -> Account:
    with db.reading() as session:
        found = session.get(Account, ident)
        assert found is not None
        return found


def an_account(db: Database, status: AccountStatus) -> str:
    with db.reading() as session:
        found = session.scalar(
            select(Account.id)
            .where(Account.kind == AccountKind.CUSTOMER, Account.status == status)
            .order_by(Account.id)
            .limit(1)
        )
        assert found is not None, f"the seed has no {status} customer account"
        return found


def update_customer(db: Database, ident: str, **values: Any) -> None:
    with db.writing() as session:
        row = session.get(Customer, ident)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)
        session.commit()


def notes_of(db: Database, customer_id: str) -> list[Note]:
    with db.reading() as session:
        return list(session.scalars(select(Note).where(Note.customer_id == customer_id)))


# --- customer.add_note -------------------------------------------------------------------------


def test_add_note_writes_a_note_by_the_actor(
    services: Services, db: Database, world: World
) -> None:
    alice = actor(world, "alice")
    target = world.customer(3)
    result = submit(
        services.gateway, alice, "customer.add_note", f"customer:{target}", {"text": "  Called  "}
    )
    assert result.status == "succeeded"
    assert result.result is not None
    [note] = notes_of(db, target)
    assert dict(result.result) == {"note_id": note.id, "customer_id": target}
    assert (note.author_id, note.author_name) == (world.user_ids["alice"], "Alice Moreno")
    assert note.text == "Called"
    assert note.created_at == services.clock.now()


@pytest.mark.parametrize("payload", [{}, {"text": ""}, {"text": "   "}, {"text": "x" * 4001}])
def test_add_note_refuses_an_empty_or_oversized_note(
    services: Services, db: Database, world: World, payload: dict[str, Any]
) -> None:
    target = world.customer(3)
    with pytest.raises(InvalidPayload):
        submit(
            services.gateway,
            actor(world, "bob"),
            "customer.add_note",
            f"customer:{target}",
            payload,
        )
    assert notes_of(db, target) == []


def test_an_auditor_cannot_add_a_note(services: Services, db: Database, world: World) -> None:
    target = world.customer(3)
    with pytest.raises(Forbidden):
        submit(
            services.gateway,
            actor(world, "audrey"),
            "customer.add_note",
            f"customer:{target}",
            {"text": "hello"},
        )
    assert notes_of(db, target) == []


# --- account.block / account.unblock -----------------------------------------------------------


def test_block_blocks_an_active_account_with_its_reason(
    services: Services, db: Database, world: World
) -> None:
    ident = an_account(db, AccountStatus.ACTIVE)
    result = submit(
        services.gateway,
        actor(world, "bob"),
        "account.block",
        f"account:{ident}",
        {"reason_code": "lost_or_stolen"},
    )
    assert result.status == "succeeded"
    assert dict(result.result or {}) == {"account_id": ident, "status": "blocked"}
    blocked = account(db, ident)
    assert (blocked.status, blocked.blocked_reason) == ("blocked", "lost_or_stolen")


def test_blocking_a_blocked_account_is_refused_and_keeps_its_reason(
    services: Services, db: Database, world: World
) -> None:
    ident = an_account(db, AccountStatus.ACTIVE)
    bob = actor(world, "bob")
    submit(
        services.gateway,
        bob,
        "account.block",
        f"account:{ident}",
        {"reason_code": "fraud_suspected"},
    )
    version = account(db, ident).version
    with pytest.raises(DomainRejected) as caught:
        submit(
            services.gateway,
            bob,
            "account.block",
            f"account:{ident}",
            {"reason_code": "customer_request"},
        )
    assert caught.value.reason == "account_already_blocked"
    after = account(db, ident)
    assert (after.status, after.blocked_reason, after.version) == (
        "blocked",
        "fraud_suspected",
        version,
    )


@pytest.mark.parametrize(
    "payload", [{}, {"reason_code": "bored"}, {"reason_code": "fraud_suspected", "x": 1}]
)
def test_block_refuses_an_unknown_reason_code(
    services: Services, db: Database, world: World, payload: dict[str, Any]
) -> None:
    ident = an_account(db, AccountStatus.ACTIVE)
    with pytest.raises(InvalidPayload):
        submit(services.gateway, actor(world, "bob"), "account.block", f"account:{ident}", payload)
    assert account(db, ident).status == "active"


def test_system_accounts_are_not_operator_targets(
    services: Services, db: Database, world: World
) -> None:
    with db.reading() as session:
        system = session.scalar(
            select(Account.id).where(Account.kind == AccountKind.SYSTEM).limit(1)
        )
    assert system is not None
    with pytest.raises(TargetNotFound):
        submit(
            services.gateway,
            actor(world, "olga"),
            "account.block",
            f"account:{system}",
            {"reason_code": "fraud_suspected"},
        )
    assert account(db, system).status == "active"


def test_unblock_reopens_a_blocked_account(services: Services, db: Database, world: World) -> None:
    ident = an_account(db, AccountStatus.BLOCKED)
    result = submit(ungated(services), actor(world, "rita"), "account.unblock", f"account:{ident}")
    assert dict(result.result or {}) == {"account_id": ident, "status": "active"}
    reopened = account(db, ident)
    assert (reopened.status, reopened.blocked_reason) == ("active", None)


def test_block_then_unblock_round_trips(services: Services, db: Database, world: World) -> None:
    ident = an_account(db, AccountStatus.ACTIVE)
    gateway = ungated(services)
    submit(
        gateway,
        actor(world, "raj"),
        "account.block",
        f"account:{ident}",
        {"reason_code": "compliance_hold"},
    )
    assert account(db, ident).status == "blocked"
    submit(gateway, actor(world, "olga"), "account.unblock", f"account:{ident}")
    assert (account(db, ident).status, account(db, ident).blocked_reason) == ("active", None)


def test_unblocking_an_active_account_is_refused(
    services: Services, db: Database, world: World
) -> None:
    ident = an_account(db, AccountStatus.ACTIVE)
    version = account(db, ident).version
    with pytest.raises(DomainRejected) as caught:
        submit(ungated(services), actor(world, "rita"), "account.unblock", f"account:{ident}")
    assert caught.value.reason == "account_not_blocked"
    assert (account(db, ident).status, account(db, ident).version) == ("active", version)


def test_a_support_agent_cannot_unblock(services: Services, db: Database, world: World) -> None:
    ident = an_account(db, AccountStatus.BLOCKED)
    with pytest.raises(Forbidden):
        submit(services.gateway, actor(world, "alice"), "account.unblock", f"account:{ident}")
    assert account(db, ident).status == "blocked"


# --- kyc.rerun_check ---------------------------------------------------------------------------


def rerun(services: Services, world: World, customer_id: str) -> dict[str, Any]:
    result = submit(
        services.gateway, actor(world, "rita"), "kyc.rerun_check", f"customer:{customer_id}"
    )
    assert result.status == "succeeded"
    return dict(result.result or {})


def test_rerun_records_the_result_time_and_count(
    services: Services, db: Database, world: World
) -> None:
    ident = world.customer(5)
    update_customer(db, ident, kyc_status=KycStatus.PENDING)
    count_before = customer(db, ident).kyc_check_count
    outcome = rerun(services, world, ident)
    assert outcome == {"customer_id": ident, "kyc_status": "passed", "findings": []}
    after = customer(db, ident)
    assert after.kyc_status == "passed"
    assert after.kyc_checked_at == services.clock.now()
    assert after.kyc_check_count == count_before + 1


def test_each_rerun_counts_and_takes_the_clocks_time(
    services: Services, db: Database, world: World, clock: FrozenClock
) -> None:
    ident = world.customer(6)
    count_before = customer(db, ident).kyc_check_count
    rerun(services, world, ident)
    first = customer(db, ident).kyc_checked_at
    clock.advance(timedelta(hours=3))
    rerun(services, world, ident)
    after = customer(db, ident)
    assert after.kyc_check_count == count_before + 2
    assert first is not None
    assert after.kyc_checked_at == clock.now() == first + timedelta(hours=3)


@pytest.mark.parametrize("name", ["Viktor Petrov", "VIKTOR PETROV", "Li Wei Zhang"])
def test_a_watchlist_name_goes_to_review(
    services: Services, db: Database, world: World, name: str
) -> None:
    ident = world.customer(7)
    update_customer(db, ident, name=name)
    outcome = rerun(services, world, ident)
    assert (outcome["kyc_status"], outcome["findings"]) == ("review", ["watchlist_name_match"])
    assert customer(db, ident).kyc_status == "review"


def test_a_watchlist_name_with_extra_spaces_still_goes_to_review(
    services: Services, db: Database, world: World
) -> None:
    ident = world.customer(7)
    update_customer(db, ident, name="Viktor  Petrov")
    assert rerun(services, world, ident)["kyc_status"] == "review"


@pytest.mark.parametrize(
    ("field", "value", "finding"),
    [
        ("email", "not-an-email", "email_malformed"),
        ("email", "a b@example.com", "email_malformed"),
        ("phone", "12345", "phone_malformed"),
        ("phone", "1415555abcd", "phone_malformed"),
        ("name", "Cher", "name_incomplete"),
    ],
)
def test_malformed_identity_data_fails(
    services: Services, db: Database, world: World, field: str, value: str, finding: str
) -> None:
    ident = world.customer(8)
    update_customer(db, ident, **{field: value})
    outcome = rerun(services, world, ident)
    assert (outcome["kyc_status"], outcome["findings"]) == ("failed", [finding])
    assert customer(db, ident).kyc_status == "failed"


def test_a_closed_customer_is_refused_and_left_unchanged(
    services: Services, db: Database, world: World
) -> None:
    ident = world.customer(9)
    update_customer(db, ident, status=CustomerStatus.CLOSED)
    before = customer(db, ident)
    with pytest.raises(DomainRejected) as caught:
        submit(services.gateway, actor(world, "rita"), "kyc.rerun_check", f"customer:{ident}")
    assert caught.value.reason == "customer_closed"
    after = customer(db, ident)
    assert (after.kyc_status, after.kyc_checked_at, after.kyc_check_count, after.version) == (
        before.kyc_status,
        before.kyc_checked_at,
        before.kyc_check_count,
        before.version,
    )


def test_a_target_of_the_wrong_kind_is_refused(
    services: Services, db: Database, world: World
) -> None:
    # An account ID where a customer is expected, and the reverse: refused before any handler.
    ident = world.account()
    checks = customer(db, world.customer()).kyc_check_count
    with pytest.raises(InvalidPayload):
        submit(services.gateway, actor(world, "rita"), "kyc.rerun_check", f"account:{ident}")
    with pytest.raises(InvalidPayload):
        submit(
            services.gateway,
            actor(world, "rita"),
            "account.block",
            f"customer:{world.customer()}",
            {"reason_code": "fraud_suspected"},
        )
    assert customer(db, world.customer()).kyc_check_count == checks
