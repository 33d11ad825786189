"""the demo's tables: customers, accounts, the ledger, payments and their reversals, notes

Revision ID: demo_0001
Revises:
Create Date: 2026-12-04 22:50:00

A fresh database gets the tables created here, in the shape opsgate's revisions 0001 and 0003
gave them before the demo became a plugin. A database those revisions already migrated holds
them, with its data: then this revision adopts them, after checking that every table, column,
index, unique and check constraint is there as declared below; a table missing, or a shape
that differs, stops the upgrade naming what differs, and nothing is created or dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from opsgate.plugin import NAMING_CONVENTION, UTCDateTime

revision: str = "demo_0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen here, never imported from the models: this revision keeps meaning what it meant.
tables = sa.MetaData(naming_convention=NAMING_CONVENTION)

sa.Table(
    "customers",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("phone", sa.String(20), nullable=False, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("kyc_status", sa.String(16), nullable=False),
    sa.Column("kyc_checked_at", UTCDateTime(), nullable=True),
    sa.Column("kyc_check_count", sa.Integer(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
)
sa.Table(
    "accounts",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("customer_id", sa.String(40), sa.ForeignKey("customers.id"), index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("blocked_reason", sa.String(64), nullable=True),
    sa.Column("balance_minor", sa.BigInteger(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.CheckConstraint(
        "(kind = 'customer') = (customer_id IS NOT NULL)", name="customer_accounts_have_owner"
    ),
)
sa.Table(
    "ledger_transactions",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("memo", sa.String(500), nullable=False),
    sa.Column("posted_at", UTCDateTime(), nullable=False),
    sa.Column("reference", sa.String(200), nullable=True, unique=True),
)
sa.Table(
    "ledger_entries",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "transaction_id",
        sa.String(40),
        sa.ForeignKey("ledger_transactions.id"),
        nullable=False,
        index=True,
    ),
    sa.Column(
        "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
    ),
    sa.Column("amount_minor", sa.BigInteger(), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.CheckConstraint("amount_minor <> 0", name="entry_not_zero"),
)
sa.Table(
    "payments",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
    ),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("amount_minor", sa.BigInteger(), nullable=False),
    sa.Column("currency", sa.String(3), nullable=False),
    sa.Column("counterparty", sa.String(200), nullable=False),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column(
        "ledger_transaction_id",
        sa.String(40),
        sa.ForeignKey("ledger_transactions.id"),
        nullable=False,
    ),
    sa.Column("posted_at", UTCDateTime(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    # Last, where revision 0003 added it to databases that already held payments.
    sa.Column("reversed_minor", sa.BigInteger(), nullable=False, server_default="0"),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
    sa.CheckConstraint(
        "reversed_minor >= 0 AND reversed_minor <= amount_minor", name="reversals_within_amount"
    ),
)
sa.Table(
    "payment_reversals",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "payment_id", sa.String(40), sa.ForeignKey("payments.id"), nullable=False, index=True
    ),
    sa.Column("amount_minor", sa.BigInteger(), nullable=False),
    sa.Column("reason_code", sa.String(32), nullable=False),
    sa.Column(
        "ledger_transaction_id",
        sa.String(40),
        sa.ForeignKey("ledger_transactions.id"),
        nullable=False,
    ),
    sa.Column("actor_id", sa.String(40), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.CheckConstraint("amount_minor > 0", name="amount_positive"),
)
sa.Table(
    "notes",
    tables,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "customer_id", sa.String(40), sa.ForeignKey("customers.id"), nullable=False, index=True
    ),
    sa.Column("author_id", sa.String(40), nullable=False),
    sa.Column("author_name", sa.String(200), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
)


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names()) & set(tables.tables)
    if not present:
        tables.create_all(bind)
        return
    missing = sorted(set(tables.tables) - present)
    if missing:
        raise RuntimeError(
            f"demo tables exist only in part (missing: {', '.join(missing)}): "
            "restore them from a backup, or drop the rest, before upgrading"
        )
    differences = _differences(bind)
    if differences:
        raise RuntimeError(
            "the demo tables already present differ from the demo's first revision, so they "
            f"are not adopted: {'; '.join(differences)}"
        )


def downgrade() -> None:
    tables.drop_all(op.get_bind())


def _differences(bind: sa.Connection) -> list[str]:
    """What differs between the existing demo tables and the frozen ones (empty: adopt)."""
    context = MigrationContext.configure(
        connection=bind,
        opts={
            "compare_type": True,
            "target_metadata": tables,
            "include_name": lambda name, type_, _parents: type_ != "table" or name in tables.tables,
        },
    )
    found = [_describe(diff) for diff in compare_metadata(context, tables)]
    inspector = sa.inspect(bind)
    for table in tables.tables.values():
        have = {check["name"] for check in inspector.get_check_constraints(table.name)}
        for check in table.constraints:
            if isinstance(check, sa.CheckConstraint) and check.name not in have:
                found.append(f"{table.name}: no check constraint {check.name}")
    return found


def _describe(diff: Any) -> str:
    if isinstance(diff, list):  # column modifications come grouped per column
        return ", ".join(_describe(item) for item in diff)
    # Alembic names what it would do to the database; say what the database has instead.
    verb, _, what = str(diff[0]).partition("_")
    state = {"add": "missing", "remove": "unexpected"}.get(verb, "changed")
    names = [str(getattr(part, "name", part)) for part in diff[1:4] if part is not None]
    return f"{state} {what} {'.'.join(names)}"
