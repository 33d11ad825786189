"""The demo data set every test database starts with, and its ledger invariants."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import func, select

from opsgate.core.actions.policy import load_policy
from opsgate.core.clock import FrozenClock
from opsgate.db.engine import Database
from opsgate.db.models import User
from opsgate_demo import seed as demo_seed
from opsgate_demo.ledger import entries_balance
from opsgate_demo.models import (
    Account,
    AccountKind,
    Customer,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    PaymentDirection,
)
from opsgate_demo.plugin import DEMO_POLICY
from tests.conftest import World
from tests.registries import build_registry


def count(db: Database, model: Any, *where: Any) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_the_seeded_world_has_the_promised_size(db: Database, world: World) -> None:
    assert count(db, Customer) >= 200
    assert count(db, Account, Account.kind == AccountKind.CUSTOMER) == 300
    assert count(db, Payment) == 1000
    assert len(world.summary.customers) == count(db, Customer)
    assert len(world.summary.accounts) == 300
    assert len(world.summary.payments) == 1000


def test_every_customer_has_an_account_and_unique_contact_data(db: Database) -> None:
    with db.reading() as session:
        customers = list(session.scalars(select(Customer)))
        owners = set(
            session.scalars(select(Account.customer_id).where(Account.customer_id.is_not(None)))
        )
    assert {c.id for c in customers} <= owners
    assert len({c.email for c in customers}) == len(customers)
    assert all(c.phone.isdigit() and 8 <= len(c.phone) <= 15 for c in customers)


def test_there_are_one_or_two_demo_users_for_every_role_of_the_demo_policy(db: Database) -> None:
    policy = load_policy(DEMO_POLICY, build_registry())
    with db.reading() as session:
        users = list(session.scalars(select(User).where(User.is_active)))
    per_role = Counter(role for user in users for role in user.role_names())
    for role in policy.roles():
        assert 1 <= per_role[role] <= 2, (role, per_role)
    assert set(per_role) <= set(policy.roles())


def test_every_ledger_transaction_sums_to_zero_per_currency(db: Database) -> None:
    with db.reading() as session:
        unbalanced = session.execute(
            select(LedgerEntry.transaction_id, LedgerEntry.currency)
            .group_by(LedgerEntry.transaction_id, LedgerEntry.currency)
            .having(func.sum(LedgerEntry.amount_minor) != 0)
        ).all()
        legs = session.execute(
            select(LedgerEntry.transaction_id, func.count())
            .group_by(LedgerEntry.transaction_id)
            .having(func.count() < 2)
        ).all()
        transactions = int(session.scalar(select(func.count(LedgerTransaction.id))) or 0)
    assert transactions >= 1000
    assert unbalanced == []
    assert legs == []


def test_every_account_balance_equals_the_sum_of_its_entries(db: Database) -> None:
    with db.reading() as session:
        accounts = list(session.scalars(select(Account)))
        sums = dict(
            session.execute(
                select(LedgerEntry.account_id, func.sum(LedgerEntry.amount_minor)).group_by(
                    LedgerEntry.account_id
                )
            ).all()
        )
        assert entries_balance(session, accounts[0].id) == accounts[0].balance_minor
    assert len(accounts) > 300  # the system accounts are included
    mismatched = [
        (a.id, a.balance_minor, int(sums.get(a.id, 0)))
        for a in accounts
        if a.balance_minor != int(sums.get(a.id, 0))
    ]
    assert mismatched == []
    assert sum(a.balance_minor for a in accounts) == 0


def test_every_payment_has_its_ledger_transaction(db: Database) -> None:
    with db.reading() as session:
        payments = list(session.scalars(select(Payment)))
        entries: dict[str, list[LedgerEntry]] = {}
        for entry in session.scalars(select(LedgerEntry)):
            entries.setdefault(entry.transaction_id, []).append(entry)
        transactions = set(session.scalars(select(LedgerTransaction.id)))
    for payment in payments:
        assert payment.ledger_transaction_id in transactions, payment.id
        own = [
            e for e in entries[payment.ledger_transaction_id] if e.account_id == payment.account_id
        ]
        sign = -1 if payment.direction == PaymentDirection.OUTBOUND else 1
        assert [(e.amount_minor, e.currency) for e in own] == [
            (sign * payment.amount_minor, payment.currency)
        ], payment.id
    assert len({p.ledger_transaction_id for p in payments}) == len(payments)


def test_seeding_again_is_a_no_op_that_returns_the_same_data(
    db: Database, world: World, clock: FrozenClock
) -> None:
    models = (Customer, Account, Payment, LedgerTransaction, LedgerEntry, User)
    before = {m.__name__: count(db, m) for m in models}
    with db.writing() as session:
        summary = demo_seed.seed(session, now=clock.now())
        session.commit()
    assert summary.skipped is True
    assert {m.__name__: count(db, m) for m in models} == before

    def key(row: dict[str, Any]) -> str:
        return str(row["id"])

    for name in ("customers", "accounts", "payments"):
        again, first = getattr(summary, name), getattr(world.summary, name)
        assert sorted(again, key=key) == sorted(first, key=key), name
    assert sorted(u["username"] for u in summary.users) == sorted(world.user_ids)
