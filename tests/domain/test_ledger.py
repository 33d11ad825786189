"""The double-entry ledger: balanced postings only, atomic, and no lost updates under load."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError

from opsgate.core.clock import FrozenClock
from opsgate.db.engine import Database
from opsgate_demo import ledger
from opsgate_demo.ledger import Leg, UnbalancedTransaction
from opsgate_demo.models import Account, AccountKind, LedgerEntry, LedgerTransaction
from tests.conftest import TestDatabase


@dataclass(frozen=True)
class Books:
    """Two customer accounts in USD, one in EUR, and the settlement accounts."""

    usd_a: str
    usd_b: str
    eur: str
    usd_settlement: str
    eur_settlement: str


@pytest.fixture
def books(db: Database) -> Books:
    with db.reading() as session:

        def customer_accounts(ccy: str) -> list[str]:
            return list(
                session.scalars(
                    select(Account.id)
                    .where(Account.kind == AccountKind.CUSTOMER, Account.currency == ccy)
                    .order_by(Account.id)
                    .limit(2)
                )
            )

        def settlement(ccy: str) -> str:
            found = session.scalar(select(Account.id).where(Account.name == f"settlement:{ccy}"))
            assert found is not None
            return found

        usd, eur = customer_accounts("USD"), customer_accounts("EUR")
        return Books(usd[0], usd[1], eur[0], settlement("USD"), settlement("EUR"))


def balances(db: Database) -> dict[str, int]:
    with db.reading() as session:
        return dict(session.execute(select(Account.id, Account.balance_minor)).all())


def counts(db: Database) -> tuple[int, int]:
    with db.reading() as session:
        txns = session.scalar(select(func.count()).select_from(LedgerTransaction))
        entries = session.scalar(select(func.count()).select_from(LedgerEntry))
    return int(txns or 0), int(entries or 0)


def test_post_writes_a_balanced_transaction_and_moves_balances_by_its_entries(
    db: Database, books: Books, clock: FrozenClock
) -> None:
    before = balances(db)
    legs = [Leg(books.usd_a, 12_345, "USD"), Leg(books.usd_b, -12_000, "USD")]
    legs.append(Leg(books.usd_settlement, -345, "USD"))
    with db.writing() as session:
        txn = ledger.post(session, legs, kind="adjustment", memo="test posting", now=clock.now())
        session.commit()
        txn_id = txn.id

    after = balances(db)
    moved = {k: after[k] - before[k] for k in after if after[k] != before[k]}
    assert moved == {books.usd_a: 12_345, books.usd_b: -12_000, books.usd_settlement: -345}
    with db.reading() as session:
        stored = session.get(LedgerTransaction, txn_id)
        assert stored is not None
        assert (stored.kind, stored.memo, stored.posted_at) == (
            "adjustment",
            "test posting",
            clock.now(),
        )
        entries = list(
            session.scalars(select(LedgerEntry).where(LedgerEntry.transaction_id == txn_id))
        )
        for account in (books.usd_a, books.usd_b, books.usd_settlement):
            assert ledger.entries_balance(session, account) == after[account]
    assert sorted((e.account_id, e.amount_minor, e.currency) for e in entries) == sorted(
        (leg.account_id, leg.amount_minor, leg.currency) for leg in legs
    )


def test_a_transaction_balanced_in_each_of_two_currencies_is_accepted(
    db: Database, books: Books, clock: FrozenClock
) -> None:
    before = balances(db)
    legs = [
        Leg(books.usd_a, 500, "USD"),
        Leg(books.usd_settlement, -500, "USD"),
        Leg(books.eur, -70, "EUR"),
        Leg(books.eur_settlement, 70, "EUR"),
    ]
    with db.writing() as session:
        ledger.post(session, legs, kind="fx", memo="two currencies", now=clock.now())
        session.commit()
    after = balances(db)
    assert after[books.usd_a] - before[books.usd_a] == 500
    assert after[books.eur] - before[books.eur] == -70
    assert sum(after.values()) == sum(before.values()) == 0


def test_a_long_memo_is_cut_to_the_column_size(
    db: Database, books: Books, clock: FrozenClock
) -> None:
    with db.writing() as session:
        txn = ledger.post(
            session,
            [Leg(books.usd_a, 1, "USD"), Leg(books.usd_b, -1, "USD")],
            kind="adjustment",
            memo="m" * 900,
            now=clock.now(),
        )
        session.commit()
        assert len(txn.memo) == 500


Books2Legs = Callable[[Books], list[Leg]]

REFUSED: dict[str, Books2Legs] = {
    "unbalanced": lambda b: [Leg(b.usd_a, 100, "USD"), Leg(b.usd_b, -99, "USD")],
    "zero_legs": lambda b: [],
    "single_leg": lambda b: [Leg(b.usd_a, 100, "USD")],
    "a_zero_leg": lambda b: [
        Leg(b.usd_a, 100, "USD"),
        Leg(b.usd_b, -100, "USD"),
        Leg(b.usd_settlement, 0, "USD"),
    ],
    "two_zero_legs": lambda b: [Leg(b.usd_a, 0, "USD"), Leg(b.usd_b, 0, "USD")],
    "balanced_only_across_currencies": lambda b: [
        Leg(b.usd_a, 100, "USD"),
        Leg(b.eur, -100, "EUR"),
    ],
    "currency_mismatch": lambda b: [Leg(b.usd_a, 100, "EUR"), Leg(b.eur, -100, "EUR")],
    "currency_mismatch_on_second_leg": lambda b: [
        Leg(b.usd_a, 100, "USD"),
        Leg(b.eur, -100, "USD"),
    ],
}


def _refused_nothing_written(
    db: Database, books: Books, clock: FrozenClock, legs: list[Leg], error: type | tuple[type, ...]
) -> None:
    before, before_counts = balances(db), counts(db)
    with db.writing() as session:
        with pytest.raises(error):
            ledger.post(session, legs, kind="adjustment", memo="refused", now=clock.now())
        session.rollback()
        # The session is usable again and nothing of the refused posting survived.
        assert (
            session.scalar(select(func.count()).select_from(LedgerTransaction))
            == (before_counts[0])
        )
        session.commit()
    assert counts(db) == before_counts
    assert balances(db) == before


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_malformed_postings_are_refused_and_nothing_is_written(
    db: Database, books: Books, clock: FrozenClock, case: str
) -> None:
    _refused_nothing_written(db, books, clock, REFUSED[case](books), UnbalancedTransaction)


def test_a_posting_to_an_unknown_account_leaves_nothing_written(
    db: Database, books: Books, clock: FrozenClock
) -> None:
    legs = [Leg(books.usd_a, 100, "USD"), Leg("acc_missing", -100, "USD")]
    _refused_nothing_written(db, books, clock, legs, (UnbalancedTransaction, IntegrityError))


def test_a_posting_to_an_unknown_account_is_refused_as_unbalanced(
    db: Database, books: Books, clock: FrozenClock
) -> None:
    legs = [Leg(books.usd_a, 100, "USD"), Leg("acc_missing", -100, "USD")]
    _refused_nothing_written(db, books, clock, legs, UnbalancedTransaction)


THREADS = 8
POSTINGS_PER_THREAD = 5


def test_concurrent_postings_to_one_account_never_lose_an_update(
    db: Database, books: Books, clock: FrozenClock
) -> None:
    before = balances(db)
    before_counts = counts(db)
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    now: datetime = clock.now()

    def work(worker: int) -> None:
        try:
            start.wait(timeout=30)
            for n in range(POSTINGS_PER_THREAD):
                amount = worker * 100 + n + 1
                with db.writing() as session:
                    ledger.post(
                        session,
                        [
                            Leg(books.usd_a, amount, "USD"),
                            Leg(books.usd_settlement, -amount, "USD"),
                        ],
                        kind="adjustment",
                        memo=f"worker {worker} #{n}",
                        now=now,
                    )
                    session.commit()
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    total = sum(w * 100 + n + 1 for w in range(THREADS) for n in range(POSTINGS_PER_THREAD))
    after = balances(db)
    assert after[books.usd_a] == before[books.usd_a] + total
    assert after[books.usd_settlement] == before[books.usd_settlement] - total
    postings = THREADS * POSTINGS_PER_THREAD
    assert counts(db) == (before_counts[0] + postings, before_counts[1] + 2 * postings)
    with db.reading() as session:
        assert ledger.entries_balance(session, books.usd_a) == after[books.usd_a]
        assert ledger.entries_balance(session, books.usd_settlement) == after[books.usd_settlement]


def test_opposite_transfers_between_two_accounts_both_succeed(
    request: pytest.FixtureRequest,
    test_db: TestDatabase,
    db: Database,
    books: Books,
    clock: FrozenClock,
) -> None:
    """A pays B while B pays A. Each posting's first balance UPDATE is held until the other's
    has run too, the interleaving that row locks taken in leg order turn into a deadlock."""
    if test_db.backend == "sqlite":
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); no interleaving")
    both_hold_one_lock = threading.Barrier(2)
    seen = threading.local()

    def after_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE ACCOUNTS") and not getattr(
            seen, "first", False
        ):
            seen.first = True
            # A correct post() may keep the other posting from reaching its UPDATE; then go on.
            with contextlib.suppress(threading.BrokenBarrierError):
                both_hold_one_lock.wait(timeout=2)

    event.listen(db.engine, "after_cursor_execute", after_execute)
    before = balances(db)
    errors: list[BaseException] = []

    def transfer(legs: list[Leg]) -> None:
        try:
            with db.writing() as session:
                ledger.post(session, legs, kind="transfer", memo="opposite", now=clock.now())
                session.commit()
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    a_to_b = [Leg(books.usd_a, -100, "USD"), Leg(books.usd_b, 100, "USD")]
    b_to_a = [Leg(books.usd_b, -30, "USD"), Leg(books.usd_a, 30, "USD")]
    threads = [threading.Thread(target=transfer, args=(legs,)) for legs in (a_to_b, b_to_a)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        event.remove(db.engine, "after_cursor_execute", after_execute)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    after = balances(db)
    assert after[books.usd_a] - before[books.usd_a] == -70
    assert after[books.usd_b] - before[books.usd_b] == 70
