"""The double-entry ledger: every transaction's entries sum to zero, per currency.

Balances are kept on `accounts.balance_minor` and changed only here, by the same amount as
the entries posted, with an atomic `balance = balance + x` so that concurrent postings to one
account cannot lose an update. Posted entries are never edited; a correction is a new
transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from opsgate.plugin import new_id
from opsgate_demo.models import Account, LedgerEntry, LedgerTransaction


class UnbalancedTransaction(ValueError):
    """Entries that do not sum to zero, or that are malformed. A programming error."""


@dataclass(frozen=True)
class Leg:
    account_id: str
    amount_minor: int
    currency: str


def post(
    session: Session,
    legs: Sequence[Leg],
    *,
    kind: str,
    memo: str,
    now: datetime,
    reference: str | None = None,
) -> LedgerTransaction:
    """Post one balanced transaction and move the balances; raise UnbalancedTransaction.

    A `reference` is unique across the ledger: posting it twice fails with IntegrityError.
    """
    if len(legs) < 2:
        raise UnbalancedTransaction("a transaction needs at least two legs")
    totals: dict[str, int] = defaultdict(int)
    for leg in legs:
        if leg.amount_minor == 0:
            raise UnbalancedTransaction("a leg cannot be zero")
        totals[leg.currency] += leg.amount_minor
    if any(totals.values()):
        raise UnbalancedTransaction(f"legs do not balance: {dict(totals)}")

    # Balances move first, in account order: every posting locks its accounts in the same
    # order, so two opposite transfers cannot deadlock; an unknown account or a currency
    # mismatch is refused before anything is written.
    for leg in sorted(legs, key=lambda leg: leg.account_id):
        moved = session.execute(
            update(Account)
            .where(Account.id == leg.account_id, Account.currency == leg.currency)
            .values(balance_minor=Account.balance_minor + leg.amount_minor)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise UnbalancedTransaction(f"no {leg.currency} account {leg.account_id}")
    txn = LedgerTransaction(
        id=new_id("ltx"), kind=kind, memo=memo[:500], posted_at=now, reference=reference
    )
    session.add(txn)
    session.flush()
    session.add_all(
        LedgerEntry(
            id=new_id("len"),
            transaction_id=txn.id,
            account_id=leg.account_id,
            amount_minor=leg.amount_minor,
            currency=leg.currency,
        )
        for leg in legs
    )
    session.flush()
    return txn


def entries_balance(session: Session, account_id: str) -> int:
    """The sum of an account's entries (what its balance must equal)."""
    total = session.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
            LedgerEntry.account_id == account_id
        )
    )
    return int(total or 0)
