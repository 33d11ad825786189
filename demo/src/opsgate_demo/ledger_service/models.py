"""The ledger service's database: the demo domain's money tables and its own key store.

The money tables are the demo domain's own SQLAlchemy models (domain/models.py), so the
handlers run unchanged. They are created with `create_all(tables=...)`, not by Alembic: this
service is a demo stand-in for a team's real ledger, its schema is exactly opsgate's demo
schema at the installed version, and it is rebuilt from an opsgate database by `init`
rather than upgraded in place. `DOMAIN_TABLES` names only tables whose foreign keys stay
within the list (checked by `check_self_contained`), so none points at opsgate's own tables.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import CheckConstraint, Engine, MetaData, String, Table, inspect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from opsgate.db.base import NAMING_CONVENTION, JSONType, UTCDateTime
from opsgate_demo.models import (
    Account,
    Customer,
    LedgerEntry,
    LedgerTransaction,
    Payment,
    PaymentReversal,
)

# In foreign-key order: a table comes after every table it refers to.
DOMAIN_TABLES: tuple[Table, ...] = tuple(
    model.__table__  # type: ignore[misc]
    for model in (Customer, Account, LedgerTransaction, LedgerEntry, Payment, PaymentReversal)
)


class OperationStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class LedgerBase(DeclarativeBase):
    """The service's own tables, apart from opsgate's metadata (opsgate never creates them)."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class LedgerOperation(LedgerBase):
    """One idempotency key and the final answer given to it.

    The row is claimed and completed in the transaction that makes the effect, so a committed
    row is `completed` and carries the answer that committed with the effect;
    `in_progress` is only ever seen by the transaction that holds the key.
    """

    __tablename__ = "ledger_operations"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 of what makes a retry "the same action" (operations.request_hash).
    request_hash: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    request_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None]
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint("status IN ('in_progress', 'completed')", name="known_status"),
        CheckConstraint(
            "(status = 'completed') = (http_status IS NOT NULL AND response IS NOT NULL)",
            name="completed_has_answer",
        ),
    )


def check_self_contained(tables: tuple[Table, ...] = DOMAIN_TABLES) -> None:
    """Raise ValueError when a table refers to one outside `tables` (or to a later one)."""
    seen: set[str] = set()
    for table in tables:
        for fk in table.foreign_keys:
            if fk.column.table.name not in seen | {table.name}:
                raise ValueError(f"{table.name} refers to {fk.column.table.name}")
        seen.add(table.name)


def create_schema(engine: Engine) -> None:
    """Create the money tables and the key store where they do not exist yet."""
    check_self_contained()
    DOMAIN_TABLES[0].metadata.create_all(engine, tables=list(DOMAIN_TABLES))
    LedgerBase.metadata.create_all(engine)


def is_initialised(engine: Engine) -> bool:
    """True when `init` has created the schema (the key store is its last table)."""
    return inspect(engine).has_table(LedgerOperation.__tablename__)
