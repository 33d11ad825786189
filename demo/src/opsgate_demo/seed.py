"""Realistic demo data: customers, accounts, posted payments with their ledger, and users.

Deterministic for a given seed (names, amounts, dates); IDs are fresh each time. Balances are
computed from the entries written, so the ledger invariants hold from the first row.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from opsgate.core.identity.users import ensure_user
from opsgate.core.ids import new_id
from opsgate.db.models import User
from opsgate_demo.models import (
    Account,
    AccountKind,
    AccountStatus,
    Customer,
    CustomerStatus,
    KycStatus,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    PaymentDirection,
    PaymentMethod,
)

FIRST = [
    "Olivia",
    "Liam",
    "Emma",
    "Noah",
    "Amelia",
    "Oliver",
    "Sophia",
    "Elijah",
    "Isabella",
    "James",
    "Mia",
    "Lucas",
    "Charlotte",
    "Mateo",
    "Harper",
    "Ethan",
    "Aisha",
    "Omar",
    "Priya",
    "Arjun",
    "Mei",
    "Hiroshi",
    "Chloe",
    "Daniel",
    "Fatima",
    "Yusuf",
    "Elena",
    "Ivan",
    "Sara",
    "Tomás",
    "Ingrid",
    "Kofi",
    "Amara",
    "Lars",
    "Nadia",
    "Diego",
    "Leila",
    "Samuel",
    "Grace",
    "Chen",
]
LAST = [
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Okafor",
    "Nakamura",
    "Schmidt",
    "Rossi",
    "Dubois",
    "Kowalski",
    "Novak",
    "Haddad",
    "Patel",
    "Singh",
    "Kim",
    "Nguyen",
    "Silva",
    "Costa",
    "Jensen",
    "Murphy",
    "O'Brien",
    "Cohen",
    "Ali",
]
COUNTERPARTIES = (
    "Acme Payroll",
    "Northwind Traders",
    "Globex Utilities",
    "Initech Rent",
    "Umbrella Insurance",
    "Stark Grocers",
    "Wayne Telecom",
    "Hooli Cloud",
    "Soylent Foods",
    "Vandelay Imports",
    "Cyberdyne Fitness",
    "Tyrell Travel",
    "Wonka Sweets",
    "Oceanic Airlines",
    "Monarch Energy",
)
CURRENCIES = ("USD", "EUR", "GBP")

DEMO_USERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("alice", "Alice Moreno", ("support_agent",)),
    ("bob", "Bob Okafor", ("support_agent",)),
    ("rita", "Rita Chen", ("risk_reviewer",)),
    ("raj", "Raj Patel", ("risk_reviewer",)),
    ("olga", "Olga Lindqvist", ("ops_lead",)),
    ("adam", "Adam Novak", ("admin",)),
    ("ada", "Ada Kim", ("admin",)),
    ("audrey", "Audrey Blake", ("auditor",)),
    ("prom", "Prometheus", ("monitor",)),
)
# Machines, not people: they get API tokens from the CLI, and never sign in to the console.
DEMO_SERVICE_ACCOUNTS = frozenset({"prom"})


@dataclass
class SeedSummary:
    customers: list[dict[str, Any]] = field(default_factory=list)
    accounts: list[dict[str, Any]] = field(default_factory=list)
    payments: list[dict[str, Any]] = field(default_factory=list)
    users: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"customers": self.customers, "accounts": self.accounts, "payments": self.payments}


def seed_users(session: Session, now: datetime) -> list[User]:
    return [
        ensure_user(session, u, name, roles, now=now, service_account=u in DEMO_SERVICE_ACCOUNTS)
        for u, name, roles in DEMO_USERS
    ]


def seed(
    session: Session,
    *,
    now: datetime,
    customers: int = 200,
    accounts: int = 300,
    payments: int = 1000,
    rng_seed: int = 7,
) -> SeedSummary:
    """Create demo users and, unless customers already exist, the demo data set."""
    summary = SeedSummary()
    summary.users = [
        {"username": u.username, "name": u.display_name, "roles": sorted(u.role_names())}
        for u in seed_users(session, now)
    ]
    if session.scalar(select(func.count()).select_from(Customer)):
        summary.skipped = True
        _describe(
            summary,
            list(session.scalars(select(Customer).order_by(Customer.id))),
            list(
                session.scalars(
                    select(Account).where(Account.kind == AccountKind.CUSTOMER).order_by(Account.id)
                )
            ),
            list(session.scalars(select(Payment).order_by(Payment.id))),
        )
        return summary
    rng = random.Random(rng_seed)
    people = _customers(rng, customers, now)
    session.add_all(people)
    session.flush()
    system = _system_accounts(now)
    owned = _accounts(rng, people, accounts, now)
    balances: dict[str, int] = defaultdict(int)
    txns, entries, posted = _payments(rng, owned, system, payments, now, balances)
    for account in [*system.values(), *owned]:
        account.balance_minor = balances[account.id]
    session.add_all([*system.values(), *owned])
    session.flush()
    session.add_all(txns)
    session.flush()
    session.add_all(entries)
    session.add_all(posted)
    session.flush()
    _describe(summary, people, owned, posted)
    return summary


def _describe(
    summary: SeedSummary, people: list[Customer], owned: list[Account], posted: list[Payment]
) -> None:
    summary.customers = [{"id": c.id, "email": c.email} for c in people]
    summary.accounts = [
        {
            "id": a.id,
            "customer_id": a.customer_id,
            "balance_minor": a.balance_minor,
            "currency": a.currency,
        }
        for a in owned
    ]
    summary.payments = [
        {
            "id": p.id,
            "account_id": p.account_id,
            "amount_minor": p.amount_minor,
            "currency": p.currency,
        }
        for p in posted
    ]


def _customers(rng: random.Random, count: int, now: datetime) -> list[Customer]:
    people = []
    for n in range(count):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        handle = f"{first}.{last}".lower().replace("'", "").replace("á", "a")
        people.append(
            Customer(
                id=new_id("cus"),
                name=f"{first} {last}",
                email=f"{handle}{n}@example.com",
                phone=f"1{rng.choice((415, 212, 646, 312, 617))}555{n:04d}",
                status=rng.choices(
                    (CustomerStatus.ACTIVE, CustomerStatus.RESTRICTED), weights=(95, 5)
                )[0],
                kyc_status=rng.choices(
                    (KycStatus.PASSED, KycStatus.PENDING, KycStatus.REVIEW), weights=(85, 10, 5)
                )[0],
                kyc_check_count=1,
                kyc_checked_at=now - timedelta(days=rng.randint(30, 700)),
                created_at=now - timedelta(days=rng.randint(30, 900)),
            )
        )
    return people


def _system_accounts(now: datetime) -> dict[tuple[str, str], Account]:
    return {
        (purpose, ccy): Account(
            id=new_id("acc"),
            customer_id=None,
            kind=AccountKind.SYSTEM,
            name=f"{purpose}:{ccy}",
            currency=ccy,
            status=AccountStatus.ACTIVE,
            created_at=now - timedelta(days=1000),
        )
        for purpose in ("settlement", "adjustments")
        for ccy in CURRENCIES
    }


def _accounts(
    rng: random.Random, people: list[Customer], count: int, now: datetime
) -> list[Account]:
    owners = list(people) + [rng.choice(people) for _ in range(max(count - len(people), 0))]
    accounts: list[Account] = []
    for owner in owners[:count]:
        first = not any(a.customer_id == owner.id for a in accounts)
        ccy = "USD" if first else rng.choice(CURRENCIES)
        accounts.append(
            Account(
                id=new_id("acc"),
                customer_id=owner.id,
                kind=AccountKind.CUSTOMER,
                name="Main" if first else f"{ccy} wallet",
                currency=ccy,
                status=rng.choices((AccountStatus.ACTIVE, AccountStatus.BLOCKED), (97, 3))[0],
                created_at=owner.created_at,
            )
        )
    for account in accounts:
        if account.status == AccountStatus.BLOCKED:
            account.blocked_reason = "fraud_suspected"
    return accounts


def _payments(
    rng: random.Random,
    owned: list[Account],
    system: dict[tuple[str, str], Account],
    count: int,
    now: datetime,
    balances: dict[str, int],
) -> tuple[list[LedgerTransaction], list[LedgerEntry], list[Payment]]:
    txns, entries, posted = [], [], []
    for n in range(count):
        account = owned[n] if n < len(owned) else rng.choice(owned)
        # Every account starts with money in; later payments go either way within the balance.
        outbound = n >= len(owned) and balances[account.id] > 2_000 and rng.random() < 0.4
        if outbound:
            amount = rng.randint(500, max(balances[account.id] // 2, 501))
        else:
            amount = rng.choice((rng.randint(500, 50_000), rng.randint(10_000, 900_000)))
        direction = PaymentDirection.OUTBOUND if outbound else PaymentDirection.INBOUND
        settlement = system[("settlement", account.currency)]
        sign = -1 if outbound else 1
        posted_at = now - timedelta(minutes=(count - n) * 37 + rng.randint(0, 30))
        txn = LedgerTransaction(
            id=new_id("ltx"), kind="payment", memo=f"{direction} payment", posted_at=posted_at
        )
        txns.append(txn)
        for acc, amt in ((account, sign * amount), (settlement, -sign * amount)):
            entries.append(
                LedgerEntry(
                    id=new_id("len"),
                    transaction_id=txn.id,
                    account_id=acc.id,
                    amount_minor=amt,
                    currency=account.currency,
                )
            )
            balances[acc.id] += amt
        posted.append(
            Payment(
                id=new_id("pay"),
                account_id=account.id,
                direction=direction,
                method=rng.choices((PaymentMethod.CARD, PaymentMethod.ACH), (65, 35))[0],
                amount_minor=amount,
                currency=account.currency,
                counterparty=rng.choice(COUNTERPARTIES),
                ledger_transaction_id=txn.id,
                posted_at=posted_at,
            )
        )
    return txns, entries, posted
