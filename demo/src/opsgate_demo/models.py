"""Tables of the demo backend."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsgate.plugin import NAMING_CONVENTION, UTCDateTime

# The demo's own tables, migrated from its own version location (migrations/), never mixed
# into opsgate's.
metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Base(DeclarativeBase):
    metadata = metadata


class CustomerStatus(StrEnum):
    ACTIVE = "active"
    RESTRICTED = "restricted"
    CLOSED = "closed"


class KycStatus(StrEnum):
    PENDING = "pending"
    PASSED = "passed"
    REVIEW = "review"
    FAILED = "failed"


class AccountKind(StrEnum):
    CUSTOMER = "customer"
    SYSTEM = "system"


class AccountStatus(StrEnum):
    ACTIVE = "active"
    BLOCKED = "blocked"


class PaymentMethod(StrEnum):
    CARD = "card"
    ACH = "ach"


class PaymentStatus(StrEnum):
    POSTED = "posted"
    PARTIALLY_REVERSED = "partially_reversed"
    REVERSED = "reversed"


class PaymentDirection(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    # Digits only (E.164 without '+'), so that any typed form of a number finds it.
    phone: Mapped[str] = mapped_column(String(20), index=True)
    status: Mapped[str] = mapped_column(String(16), default=CustomerStatus.ACTIVE)
    kyc_status: Mapped[str] = mapped_column(String(16), default=KycStatus.PENDING)
    kyc_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    kyc_check_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(default=1)

    __mapper_args__ = {"version_id_col": version}


class Account(Base):
    """A ledger account. Customer accounts belong to a customer; system accounts (settlement,
    adjustments) are the other side of money entering or leaving the customers' books."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str | None] = mapped_column(ForeignKey("customers.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=AccountKind.CUSTOMER)
    name: Mapped[str] = mapped_column(String(100))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=AccountStatus.ACTIVE)
    blocked_reason: Mapped[str | None] = mapped_column(String(64))
    balance_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(default=1)

    __table_args__ = (
        CheckConstraint(
            "(kind = 'customer') = (customer_id IS NOT NULL)", name="customer_accounts_have_owner"
        ),
    )
    __mapper_args__ = {"version_id_col": version}


class LedgerTransaction(Base):
    """A balanced set of entries posted together. Never edited once posted."""

    __tablename__ = "ledger_transactions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    memo: Mapped[str] = mapped_column(String(500))
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # At most one transaction per reference (e.g. one reversal per execution request): the
    # ledger itself refuses a duplicate effect, whatever happened upstream.
    reference: Mapped[str | None] = mapped_column(String(200), unique=True)


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"), index=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))

    __table_args__ = (CheckConstraint("amount_minor <> 0", name="entry_not_zero"),)


class Payment(Base):
    """A posted card or ACH payment into or out of a customer account."""

    __tablename__ = "payments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    direction: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(8))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    counterparty: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(24), default=PaymentStatus.POSTED)
    # Sum of all reversals; the database refuses more than the payment was worth.
    reversed_minor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    ledger_transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"))
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    version: Mapped[int] = mapped_column(default=1)

    __table_args__ = (
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        CheckConstraint(
            "reversed_minor >= 0 AND reversed_minor <= amount_minor", name="reversals_within_amount"
        ),
    )
    __mapper_args__ = {"version_id_col": version}


class PaymentReversal(Base):
    """One (full or partial) reversal of a payment, posted as its own ledger transaction."""

    __tablename__ = "payment_reversals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    payment_id: Mapped[str] = mapped_column(ForeignKey("payments.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    reason_code: Mapped[str] = mapped_column(String(32))
    ledger_transaction_id: Mapped[str] = mapped_column(ForeignKey("ledger_transactions.id"))
    actor_id: Mapped[str] = mapped_column(String(40))
    request_id: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (CheckConstraint("amount_minor > 0", name="amount_positive"),)


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    customer_id: Mapped[str] = mapped_column(ForeignKey("customers.id"), index=True)
    author_id: Mapped[str] = mapped_column(String(40))
    author_name: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
