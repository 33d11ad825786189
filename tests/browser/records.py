"""What the database says after a browser session: the ground truth behind what a page shows."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from opsgate.db.engine import Database
from opsgate.db.models import ApprovalRequest, AuditRecord
from opsgate_demo.models import (
    Account,
    AccountKind,
    Customer,
    LedgerEntry,
    Note,
    Payment,
    PaymentReversal,
)


@dataclass(frozen=True)
class PaymentCase:
    """A posted payment on an active account with its owner: what a reversal test starts from."""

    payment_id: str
    amount_minor: int
    currency: str
    account_id: str
    customer_id: str
    customer_email: str


def payment_case(db: Database, *, more_than: int, at_most: int) -> PaymentCase:
    """The first untouched payment whose amount is in (more_than, at_most], on an active account."""
    with db.reading() as session:
        row = session.execute(
            select(Payment, Account, Customer)
            .join(Account, Account.id == Payment.account_id)
            .join(Customer, Customer.id == Account.customer_id)
            .where(
                Payment.amount_minor > more_than,
                Payment.amount_minor <= at_most,
                Payment.reversed_minor == 0,
                Account.status == "active",
                Account.kind == AccountKind.CUSTOMER,
                Customer.status == "active",
            )
            .order_by(Payment.id)
            .limit(1)
        ).one()
        payment, account, customer = row
        return PaymentCase(
            payment.id,
            payment.amount_minor,
            payment.currency,
            account.id,
            customer.id,
            customer.email,
        )


@dataclass(frozen=True)
class AccountCase:
    """An active customer's active account: what a block test starts from."""

    account_id: str
    customer_id: str
    customer_email: str


def account_case(db: Database) -> AccountCase:
    with db.reading() as session:
        account, customer = session.execute(
            select(Account, Customer)
            .join(Customer, Customer.id == Account.customer_id)
            .where(Account.status == "active", Customer.status == "active")
            .order_by(Account.id)
            .limit(1)
        ).one()
        return AccountCase(account.id, customer.id, customer.email)


def account_status(db: Database, account_id: str) -> tuple[str, str | None]:
    with db.reading() as session:
        account = session.get_one(Account, account_id)
        return account.status, account.blocked_reason


def account_balance(db: Database, account_id: str) -> int:
    with db.reading() as session:
        return session.get_one(Account, account_id).balance_minor


def ledger_balance(db: Database, account_id: str) -> int:
    """The account's balance as the sum of its ledger entries (independent of the cached one)."""
    with db.reading() as session:
        total = session.scalar(
            select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0)).where(
                LedgerEntry.account_id == account_id
            )
        )
        return int(total or 0)


def ledger_total(db: Database) -> int:
    """The sum of every ledger entry: zero while the books balance."""
    with db.reading() as session:
        return int(session.scalar(select(func.coalesce(func.sum(LedgerEntry.amount_minor), 0))))


def reversals(db: Database, payment_id: str) -> list[tuple[int, str]]:
    """(amount_minor, request_id) of each reversal of the payment."""
    with db.reading() as session:
        rows = session.execute(
            select(PaymentReversal.amount_minor, PaymentReversal.request_id).where(
                PaymentReversal.payment_id == payment_id
            )
        ).all()
        return [(int(amount), str(request_id)) for amount, request_id in rows]


def reversed_minor(db: Database, payment_id: str) -> int:
    with db.reading() as session:
        return session.get_one(Payment, payment_id).reversed_minor


def notes(db: Database, customer_id: str) -> list[str]:
    with db.reading() as session:
        return list(session.scalars(select(Note.text).where(Note.customer_id == customer_id)))


def approvals(db: Database, target: str) -> list[ApprovalRequest]:
    with db.reading() as session:
        return list(
            session.scalars(
                select(ApprovalRequest)
                .where(ApprovalRequest.target == target)
                .order_by(ApprovalRequest.created_at)
            )
        )


def audit_count(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def audit_results(db: Database, request_id: str) -> list[tuple[str, str]]:
    """(action, result) of the audit records carrying the request ID."""
    with db.reading() as session:
        rows = session.execute(
            select(AuditRecord.action, AuditRecord.result).where(
                AuditRecord.request_id == request_id
            )
        ).all()
        return [(str(action), str(result)) for action, result in rows]
