"""Cumulative controls: a threshold cannot be avoided by splitting a request, across
requests, keys or waiting approvals (DESIGN.md invariant 9)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from opsgate.core.approvals.gate import Decision
from opsgate.core.approvals.states import ApprovalStatus
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest
from opsgate.web.services import Services
from opsgate_demo.models import Account, Payment
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World, demo_policy_with, services_with_policy
from tests.domain.test_money import run_concurrently
from tests.step_ups import stepped_up

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}
DEMO_REVERSAL_TIERS = """tiers = [
  { when = [{ field = "cumulative.target.amount", window = "30d", op = "gt", value = 500000 }], quorum = 2 },
  { when = [{ field = "cumulative.customer.amount", window = "24h", op = "gt", value = 500000 }], quorum = 2 },
  { when = [{ field = "cumulative.actor.amount", window = "24h", op = "gt", value = 500000 }], quorum = 2 },
  { when = [{ field = "cumulative.target.amount", window = "30d", op = "gt", value = 10000 }], quorum = 1 },
  { when = [{ field = "cumulative.customer.amount", window = "24h", op = "gt", value = 50000 }], quorum = 1 },
  { when = [{ field = "cumulative.actor.amount", window = "24h", op = "gt", value = 100000 }], quorum = 1 },
]"""  # noqa: E501


def with_reversal_tiers(services: Services, tiers: str) -> Services:
    """The demo policy with payment.reverse judged on `tiers` only (count limit off)."""
    text = demo_policy_with(
        {
            DEMO_REVERSAL_TIERS: tiers,
            'max_count = 30\nmode = "enforce"': 'max_count = 30\nmode = "off"',
        }
    )
    return services_with_policy(services, text)


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


def reverse(
    services: Services,
    world: World,
    payment_id: str,
    amount: int,
    request_id: str,
    *,
    who: str = "alice",
    reason_code: str = "customer_dispute",
) -> Any:
    return services.gateway.submit(
        actor(world, who),
        "payment.reverse",
        {
            "target": f"payment:{payment_id}",
            "payload": {"amount_minor": amount, "reason_code": reason_code},
            "reason": "customer disputes the charge",
        },
        Origin(request_id),
        request_id,
    )


def approval(db: Database, approval_id: str) -> ApprovalRequest:
    with db.reading() as session:
        row = session.get(ApprovalRequest, approval_id)
        assert row is not None
        return row


def reversed_minor(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        payment = session.get(Payment, payment_id)
        assert payment is not None
        return payment.reversed_minor


def payments_of_one_customer(db: Database, count: int, *, at_least: int) -> list[Payment]:
    """`count` payments of one customer, each of at least `at_least`, on active accounts."""
    with db.reading() as session:
        eligible = (
            select(Payment, Account.customer_id)
            .join(Account, Account.id == Payment.account_id)
            .where(Payment.amount_minor >= at_least, Account.status == "active")
            .order_by(Payment.id)
        )
        by_customer: dict[str, list[Payment]] = {}
        for payment, customer_id in session.execute(eligible):
            by_customer.setdefault(customer_id, []).append(payment)
        for payments in by_customer.values():
            if len(payments) >= count:
                return payments[:count]
    raise AssertionError(f"no customer has {count} payments of at least {at_least}")


def payments_of_different_customers(db: Database, count: int, *, at_least: int) -> list[Payment]:
    with db.reading() as session:
        eligible = (
            select(Payment, Account.customer_id)
            .join(Account, Account.id == Payment.account_id)
            .where(Payment.amount_minor >= at_least, Account.status == "active")
            .order_by(Payment.id)
        )
        chosen: dict[str, Payment] = {}
        for payment, customer_id in session.execute(eligible):
            chosen.setdefault(customer_id, payment)
            if len(chosen) == count:
                return list(chosen.values())
    raise AssertionError(f"fewer than {count} customers have a payment of {at_least}")


# --- splitting under the demo policy -------------------------------------------------------


def test_a_split_reversal_is_held_in_the_tier_the_whole_amount_gets(
    services: Services, db: Database, world: World
) -> None:
    split_payment, whole_payment = payments_of_different_customers(db, 2, at_least=25_871)

    first = reverse(services, world, split_payment.id, 10_000, "split-1")
    second = reverse(services, world, split_payment.id, 9_999, "split-2")
    third = reverse(services, world, split_payment.id, 5_872, "split-3")
    whole = reverse(services, world, whole_payment.id, 25_871, "whole", who="bob")

    assert first.status == "succeeded"
    assert (second.status, third.status, whole.status) == ("pending_approval",) * 3
    held = approval(db, whole.approval_id)
    for split in (second, third):
        row = approval(db, split.approval_id)
        assert (row.quorum, row.rule["tier"]) == (held.quorum, held.rule["tier"])
    # Only the part under the threshold moved without an approver.
    assert reversed_minor(db, split_payment.id) == 10_000


def test_the_rule_says_which_cumulative_figure_held_the_request(
    services: Services, db: Database, world: World
) -> None:
    [payment] = payments_of_different_customers(db, 1, at_least=25_871)
    for n, amount in enumerate((10_000, 9_999)):
        reverse(services, world, payment.id, amount, f"why-{n}")
    held = reverse(services, world, payment.id, 5_872, "why-last")
    currency = payment.currency
    assert approval(db, held.approval_id).rule["because"] == [
        f"cumulative 258.71 {currency} on this payment in 30d > 100.00 {currency}"
    ]


def test_reversals_split_across_a_customers_payments_are_held(
    services: Services, db: Database, world: World
) -> None:
    payments = payments_of_one_customer(db, 6, at_least=9_000)
    results = [
        reverse(services, world, p.id, 9_000, f"cust-{n}", who=("alice", "bob")[n % 2])
        for n, p in enumerate(payments)
    ]
    # 5 x 90.00 = 450.00 stay under 500.00 for the customer; the sixth (540.00) is held.
    assert [r.status for r in results] == ["succeeded"] * 5 + ["pending_approval"]
    assert approval(db, results[-1].approval_id).quorum == 1


def test_one_agents_small_reversals_across_customers_are_held_past_their_daily_total(
    services: Services, db: Database, world: World
) -> None:
    payments = payments_of_different_customers(db, 13, at_least=9_000)
    results = [reverse(services, world, p.id, 9_000, f"act-{n}") for n, p in enumerate(payments)]
    # 11 x 90.00 = 990.00 by alice; the twelfth brings her day to 1,080.00 > 1,000.00.
    assert [r.status for r in results] == ["succeeded"] * 11 + ["pending_approval"] * 2
    # Another agent's day is their own.
    other = payments_of_different_customers(db, 14, at_least=9_000)[-1]
    assert reverse(services, world, other.id, 9_000, "act-bob", who="bob").status == "succeeded"


def test_split_adjustments_of_one_account_need_two_approvers_like_the_whole(
    services: Services, db: Database, world: World
) -> None:
    def adjust(amount: int, request_id: str) -> Any:
        return services.gateway.submit(
            actor(world, "rita"),
            "account.adjust_balance",
            {
                "target": f"account:{world.account(1)}",
                "payload": {"amount_minor": amount, "memo": "correct a posting error"},
                "reason": "ticket 7",
            },
            Origin(request_id),
            request_id,
        )

    quorums = [approval(db, adjust(-40_000, f"adj-{n}").approval_id).quorum for n in range(3)]
    assert quorums == [1, 1, 2]  # 800.00 so far, then 1,200.00 > 1,000.00


# --- requests held for approval count while they may still execute -------------------------

GOODWILL_ALWAYS_HELD = """tiers = [
  { when = [{ field = "payload.reason_code", op = "eq", value = "goodwill" }], quorum = 1 },
  { when = [{ field = "cumulative.target.amount", window = "30d", op = "gt", value = 10000 }], quorum = 1 },
]"""  # noqa: E501


def test_a_pending_request_counts_toward_the_next(
    services: Services, db: Database, world: World
) -> None:
    gated = with_reversal_tiers(services, GOODWILL_ALWAYS_HELD)
    [payment] = payments_of_different_customers(db, 1, at_least=12_000)
    first = reverse(gated, world, payment.id, 6_000, "pend-1", reason_code="goodwill")
    second = reverse(gated, world, payment.id, 6_000, "pend-2")
    assert (first.status, second.status) == ("pending_approval", "pending_approval")
    assert approval(db, second.approval_id).rule["because"][0].startswith("cumulative 120.00")


@pytest.mark.parametrize("ending", ["reject", "cancel", "expire"])
def test_a_request_that_can_no_longer_execute_stops_counting(
    services: Services, db: Database, world: World, ending: str
) -> None:
    gated = with_reversal_tiers(services, GOODWILL_ALWAYS_HELD)
    [payment] = payments_of_different_customers(db, 1, at_least=12_000)
    first = reverse(gated, world, payment.id, 6_000, "stop-1", reason_code="goodwill")
    if ending == "reject":
        gated.approvals.decide(
            first.approval_id, actor(world, "rita"), Decision.REJECT, "no", Origin("stop-no")
        )
    elif ending == "cancel":
        gated.approvals.cancel(first.approval_id, actor(world, "alice"), Origin("stop-cancel"))
    else:
        gated.clock.advance(timedelta(hours=25))  # past its expiry, not yet marked expired
    assert reverse(gated, world, payment.id, 6_000, "stop-2").status == "succeeded"


def test_an_approved_and_executed_request_keeps_counting(
    services: Services, db: Database, world: World
) -> None:
    gated = with_reversal_tiers(services, GOODWILL_ALWAYS_HELD)
    [payment] = payments_of_different_customers(db, 1, at_least=12_000)
    first = reverse(gated, world, payment.id, 6_000, "exec-1", reason_code="goodwill")
    rita, proof = stepped_up(db, actor(world, "rita"), gated.clock.now())
    done = gated.approvals.decide(
        first.approval_id, rita, Decision.APPROVE, None, Origin("exec-ok"), step_up=proof
    )
    assert done.status == "succeeded"
    assert reverse(gated, world, payment.id, 6_000, "exec-2").status == "pending_approval"


STILL_COUNTING = {"pending", "approved", "executing", "succeeded"}


@pytest.mark.parametrize("status", [s.value for s in ApprovalStatus])
def test_a_held_use_counts_exactly_while_its_request_may_execute_or_has(
    services: Services, db: Database, world: World, status: str
) -> None:
    gated = with_reversal_tiers(services, GOODWILL_ALWAYS_HELD)
    [payment] = payments_of_different_customers(db, 1, at_least=12_000)
    first = reverse(gated, world, payment.id, 6_000, "st-1", reason_code="goodwill")
    with db.writing() as session:  # each status as the state machine would leave it
        session.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == first.approval_id)
            .values(status=status)
        )
        session.commit()
    second = reverse(gated, world, payment.id, 6_000, "st-2")
    expected = "pending_approval" if status in STILL_COUNTING else "succeeded"
    assert second.status == expected


# --- concurrency: the figures are serialised per target, actor and customer ----------------


CUSTOMER_ONLY = """tiers = [
  { when = [{ field = "cumulative.customer.amount", window = "24h", op = "gt", value = 10000 }], quorum = 1 },
]"""  # noqa: E501


def test_concurrent_reversals_of_one_customers_payments_cannot_all_pass(
    services: Services, db: Database, world: World
) -> None:
    # Four people, four payments, one customer: only the customer's figure is shared, so only
    # its lock stands between them.
    gated = with_reversal_tiers(services, CUSTOMER_ONLY)
    payments = payments_of_one_customer(db, 4, at_least=4_000)
    people = ("alice", "bob", "rita", "raj")

    def work(n: int) -> str:
        return str(reverse(gated, world, payments[n].id, 4_000, f"cc-{n}", who=people[n]).status)

    outcomes = run_concurrently(4, work)
    assert sorted(outcomes) == ["pending_approval"] * 2 + ["succeeded"] * 2
    with db.reading() as session:
        moved = session.scalar(
            select(func.sum(Payment.reversed_minor)).where(Payment.id.in_([p.id for p in payments]))
        )
    assert moved == 8_000
