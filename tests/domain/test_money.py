"""Money-moving actions: reversals and adjustments, their approval tiers, and a ledger that
cannot double-spend whatever the idempotency keys say (DESIGN.md invariants 5 and 6)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from opsgate.core.approvals.gate import Decision
from opsgate.core.errors import DomainRejected, LimitExceeded
from opsgate.core.identity.actors import Actor, Origin
from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, AuditRecord
from opsgate.web.services import Services
from opsgate_demo.models import Account, LedgerEntry, Payment, PaymentReversal
from opsgate_demo.seed import DEMO_USERS
from tests.conftest import World, demo_policy_with, services_with_policy
from tests.step_ups import stepped_up

ROLES = {username: frozenset(roles) for username, _name, roles in DEMO_USERS}

UNGATED_REVERSALS = {
    """[actions."payment.reverse".approval]
mode = "enforce\"""": """[actions."payment.reverse".approval]
mode = "off\"""",
    """max_count = 30
mode = "enforce\"""": """max_count = 30
mode = "off\"""",
}


def actor(world: World, username: str) -> Actor:
    return Actor(id=world.user_ids[username], name=username, roles=ROLES[username])


def payment_row(db: Database, payment_id: str) -> Payment:
    with db.reading() as session:
        row = session.get(Payment, payment_id)
        assert row is not None
        return row


def ledger_is_consistent(db: Database) -> None:
    """Every transaction sums to zero; every balance equals its entries; no over-reversal."""
    with db.reading() as session:
        unbalanced = session.execute(
            select(LedgerEntry.transaction_id)
            .group_by(LedgerEntry.transaction_id, LedgerEntry.currency)
            .having(func.sum(LedgerEntry.amount_minor) != 0)
        ).all()
        assert unbalanced == []
        sums = dict(
            session.execute(
                select(LedgerEntry.account_id, func.sum(LedgerEntry.amount_minor)).group_by(
                    LedgerEntry.account_id
                )
            ).all()
        )
        for account in session.scalars(select(Account)):
            assert account.balance_minor == sums.get(account.id, 0), account.id
        reversed_sums = dict(
            session.execute(
                select(PaymentReversal.payment_id, func.sum(PaymentReversal.amount_minor)).group_by(
                    PaymentReversal.payment_id
                )
            ).all()
        )
        for payment in session.scalars(select(Payment)):
            assert payment.reversed_minor == reversed_sums.get(payment.id, 0)
            assert payment.reversed_minor <= payment.amount_minor


def reverse(
    services: Services,
    world: World,
    payment_id: str,
    amount: int,
    *,
    who: str = "alice",
    key: str | None = None,
    request_id: str = "rev",
) -> Any:
    return services.gateway.submit(
        actor(world, who),
        "payment.reverse",
        {
            "target": f"payment:{payment_id}",
            "payload": {"amount_minor": amount, "reason_code": "customer_dispute"},
            "reason": "customer disputes the charge",
        },
        Origin(request_id),
        key or request_id,
    )


def small_payment(db: Database, world: World, *, at_most: int) -> Payment:
    with db.reading() as session:
        payment = session.scalars(
            select(Payment).where(Payment.amount_minor <= at_most).order_by(Payment.id)
        ).first()
        assert payment is not None
        return payment


def large_payment(db: Database, *, at_least: int) -> Payment:
    with db.reading() as session:
        payment = session.scalars(
            select(Payment)
            .join(Account, Account.id == Payment.account_id)
            .where(Payment.amount_minor >= at_least, Account.status == "active")
            .order_by(Payment.id)
        ).first()
        assert payment is not None
        return payment


def test_partial_then_full_reversal_moves_money_once(
    services: Services, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    with db.reading() as session:
        before = session.get(Account, payment.account_id).balance_minor  # type: ignore[union-attr]
    first = reverse(services, world, payment.id, payment.amount_minor // 2, request_id="r1")
    assert first.status == "succeeded"
    rest = payment.amount_minor - payment.amount_minor // 2
    second = reverse(services, world, payment.id, rest, request_id="r2")
    assert second.result["remaining_minor"] == 0
    row = payment_row(db, payment.id)
    assert (row.reversed_minor, row.status) == (payment.amount_minor, "reversed")
    with db.reading() as session:
        after = session.get(Account, payment.account_id).balance_minor  # type: ignore[union-attr]
    sign = -1 if payment.direction == "inbound" else 1
    assert after - before == sign * payment.amount_minor
    with pytest.raises(DomainRejected) as caught:
        reverse(services, world, payment.id, 1, request_id="r3")
    assert caught.value.reason == "reversal_exceeds_payment"
    ledger_is_consistent(db)


def test_blocked_account_refuses_money_movement(
    services: Services, db: Database, world: World
) -> None:
    payment = small_payment(db, world, at_most=10_000)
    services.gateway.submit(
        actor(world, "alice"),
        "account.block",
        {
            "target": f"account:{payment.account_id}",
            "payload": {"reason_code": "fraud_suspected"},
            "reason": "fraud",
        },
        Origin("blk"),
    )
    with pytest.raises(DomainRejected) as caught:
        reverse(services, world, payment.id, 100, request_id="rb")
    assert caught.value.reason == "account_blocked"
    with pytest.raises(DomainRejected):
        services.gateway.submit(
            actor(world, "olga"),
            "account.adjust_balance",
            {
                "target": f"account:{payment.account_id}",
                "payload": {"amount_minor": 500, "memo": "fee refund"},
                "reason": "refund",
            },
            Origin("adj-b"),
            "adj-b",
        )
    assert payment_row(db, payment.id).reversed_minor == 0
    ledger_is_consistent(db)


@pytest.mark.parametrize(
    ("amount", "quorum"), [(10_000, None), (10_001, 1), (500_000, 1), (500_001, 2)]
)
def test_reversal_approval_tiers(
    services: Services, db: Database, world: World, amount: int, quorum: int | None
) -> None:
    payment = large_payment(db, at_least=amount)
    result = reverse(services, world, payment.id, amount, request_id=f"tier-{amount}")
    if quorum is None:
        assert result.status == "succeeded"
        return
    assert result.status == "pending_approval"
    with db.reading() as session:
        approval = session.get(ApprovalRequest, result.approval_id)
        assert approval is not None
        assert approval.quorum == quorum
    assert payment_row(db, payment.id).reversed_minor == 0


@pytest.mark.parametrize(
    ("amount", "quorum"), [(500, 1), (-100_000, 1), (-100_001, 2), (250_000, 2)]
)
def test_adjustment_always_needs_approval(
    services: Services, db: Database, world: World, amount: int, quorum: int
) -> None:
    result = services.gateway.submit(
        actor(world, "rita"),
        "account.adjust_balance",
        {
            "target": f"account:{world.account(1)}",
            "payload": {"amount_minor": amount, "memo": "correct a posting error"},
            "reason": "ticket 7",
        },
        Origin(f"adj-{amount}"),
        f"adj-{amount}",
    )
    assert result.status == "pending_approval"
    with db.reading() as session:
        approval = session.get(ApprovalRequest, result.approval_id)
        assert approval is not None
        assert approval.quorum == quorum
        assert approval.proposed_change["after"]["balance_minor"] == (
            approval.proposed_change["before"]["balance_minor"] + amount
        )


def test_approved_adjustment_posts_against_adjustments_account(
    services: Services, db: Database, world: World
) -> None:
    account = world.account(1)
    with db.reading() as session:
        before = session.get(Account, account).balance_minor  # type: ignore[union-attr]
    pending = services.gateway.submit(
        actor(world, "rita"),
        "account.adjust_balance",
        {
            "target": f"account:{account}",
            "payload": {"amount_minor": -2_500, "memo": "fee"},
            "reason": "duplicate credit",
        },
        Origin("adj-1"),
        "adj-1",
    )
    olga, proof = stepped_up(db, actor(world, "olga"), services.clock.now())
    done = services.approvals.decide(
        pending.approval_id, olga, Decision.APPROVE, None, Origin("adj-ok"), step_up=proof
    )
    assert done.status == "succeeded"
    with db.reading() as session:
        assert session.get(Account, account).balance_minor == before - 2_500  # type: ignore[union-attr]
        adjustments = session.scalars(
            select(Account).where(Account.name == "adjustments:USD")
        ).one()
        assert adjustments.balance_minor == 2_500
    ledger_is_consistent(db)


def test_near_duplicates_are_flagged(services: Services, db: Database, world: World) -> None:
    payment = large_payment(db, at_least=60_000)
    first = reverse(services, world, payment.id, 20_000, who="alice", request_id="nd-1")
    second = reverse(services, world, payment.id, 20_000, who="bob", request_id="nd-2")
    with db.reading() as session:
        approval = session.get(ApprovalRequest, second.approval_id)
        assert approval is not None
        [flag] = approval.flags["near_duplicates"]  # type: ignore[index]
        assert (flag["request_id"], flag["approval_id"]) == ("nd-1", first.approval_id)
        record = session.scalars(select(AuditRecord).where(AuditRecord.request_id == "nd-2")).one()
        assert record.flags == approval.flags
        first_approval = session.get(ApprovalRequest, first.approval_id)
        assert first_approval is not None and first_approval.flags is None


def run_concurrently(count: int, work: Callable[[int], str]) -> list[str]:
    barrier = threading.Barrier(count)
    outcomes: list[str] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        barrier.wait()
        try:
            outcome = work(n)
        except Exception as exc:
            outcome = getattr(exc, "code", type(exc).__name__)
        with lock:
            outcomes.append(str(outcome))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == count
    return outcomes


def test_fifty_identical_requests_have_one_effect(
    services: Services, db: Database, world: World
) -> None:
    ungated = services_with_policy(services, demo_policy_with(UNGATED_REVERSALS))
    payment = large_payment(db, at_least=10_000)

    def work(n: int) -> str:
        result = reverse(ungated, world, payment.id, 1_000, key="same-key", request_id=f"s{n}")
        return "replayed" if result.replayed else result.status

    outcomes = run_concurrently(50, work)
    assert outcomes.count("succeeded") == 1
    assert set(outcomes) <= {"succeeded", "replayed", "idempotency_in_flight"}
    assert payment_row(db, payment.id).reversed_minor == 1_000
    ledger_is_consistent(db)


def test_fifty_different_keys_cannot_exceed_the_payment(
    services: Services, db: Database, world: World
) -> None:
    ungated = services_with_policy(services, demo_policy_with(UNGATED_REVERSALS))
    payment = large_payment(db, at_least=10_000)
    share = payment.amount_minor * 30 // 100

    def work(n: int) -> str:
        return str(
            reverse(ungated, world, payment.id, share, key=f"k{n}", request_id=f"d{n}").status
        )

    outcomes = run_concurrently(50, work)
    assert outcomes.count("succeeded") == 3
    assert outcomes.count("domain_rejected") == 47
    assert payment_row(db, payment.id).reversed_minor == 3 * share
    with db.reading() as session:
        refused = session.scalar(
            select(func.count()).where(
                AuditRecord.action == "payment.reverse",
                AuditRecord.error_code == "domain_rejected:reversal_exceeds_payment",
            )
        )
    assert refused == 47
    ledger_is_consistent(db)


def test_enforced_limit_refuses_and_monitor_limit_records(
    services: Services, db: Database, world: World
) -> None:
    policy = demo_policy_with(
        UNGATED_REVERSALS
        | {
            "max_count = 30": "max_count = 2",
            'window = "24h"\nmax_amount_minor = 500000': 'window = "24h"\nmax_amount_minor = 1500',
        }
    ).replace('max_count = 2\nmode = "off"', 'max_count = 2\nmode = "enforce"')
    limited = services_with_policy(services, policy)
    payment = large_payment(db, at_least=10_000)
    reverse(limited, world, payment.id, 1_000, request_id="l1")
    second = reverse(limited, world, payment.id, 1_000, request_id="l2")  # over 1500 summed
    assert second.status == "succeeded"
    with pytest.raises(LimitExceeded) as caught:
        reverse(limited, world, payment.id, 1_000, request_id="l3")
    assert caught.value.extra["limits"][0]["limit"] == "hourly_reversal_count"
    assert payment_row(db, payment.id).reversed_minor == 2_000
    with db.reading() as session:
        results = {
            r.request_id + ":" + r.result
            for r in session.scalars(
                select(AuditRecord).where(AuditRecord.request_id.in_(["l1", "l2", "l3"]))
            )
        }
    assert results == {"l1:succeeded", "l2:succeeded", "l2:would_be_limited", "l3:limited"}
    # Another operator has their own budget.
    assert reverse(limited, world, payment.id, 1_000, who="bob", request_id="l4").status == (
        "succeeded"
    )
