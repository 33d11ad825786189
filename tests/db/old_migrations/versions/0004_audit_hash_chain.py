"""audit hash chain

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 11:48:00.840492
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import opsgate.db.base
from opsgate.db import append_only

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_archive_permits",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_archive_permits")),
    )
    op.create_table(
        "audit_archives",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("through_seq", sa.BigInteger(), nullable=False),
        sa.Column("through_hash", sa.String(length=64), nullable=False),
        sa.Column("records", sa.BigInteger(), nullable=False),
        sa.Column("file_name", sa.String(length=500), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("archived_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("archived_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_archives")),
        sa.UniqueConstraint("through_seq", name=op.f("uq_audit_archives_through_seq")),
    )
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_chain_head")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    head_seq, head_hash = _chain_existing_records()
    op.bulk_insert(
        sa.table("audit_chain_head", sa.column("id"), sa.column("seq"), sa.column("hash")),
        [{"id": 1, "seq": head_seq, "hash": head_hash}],
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=False)
    append_only.install(op.get_bind())


def downgrade() -> None:
    append_only.remove(op.get_bind())
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")

    op.drop_table("audit_chain_head")
    op.drop_table("audit_archives")
    op.drop_table("audit_archive_permits")


_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_RECORDS = sa.table(
    "audit_records",
    sa.column("seq", sa.BigInteger()),
    sa.column("id", sa.String()),
    sa.column("occurred_at", opsgate.db.base.UTCDateTime(timezone=True)),
    sa.column("request_id", sa.String()),
    sa.column("execution_request_id", sa.String()),
    sa.column("approval_id", sa.String()),
    sa.column("actor_id", sa.String()),
    sa.column("actor_name", sa.String()),
    sa.column("actor_roles", _JSON),
    sa.column("credential_id", sa.String()),
    sa.column("origin_ip", sa.String()),
    sa.column("user_agent", sa.String()),
    sa.column("action", sa.String()),
    sa.column("target", sa.String()),
    sa.column("parameters", _JSON),
    sa.column("reason", sa.Text()),
    sa.column("result", sa.String()),
    sa.column("error_code", sa.String()),
    sa.column("error_message", sa.Text()),
    sa.column("before", _JSON),
    sa.column("after", _JSON),
    sa.column("outcome", _JSON),
    sa.column("flags", _JSON),
    sa.column("policy_version", sa.String()),
    sa.column("prev_hash", sa.String()),
    sa.column("hash", sa.String()),
)


def _chain_existing_records() -> tuple[int, str]:
    """Chain the records written before the chain existed, in their order, renumbering the
    sequence to be contiguous from 1 (nothing refers to it yet)."""
    from types import SimpleNamespace

    from opsgate.core.audit.chain import GENESIS, HASHED_FIELDS, record_hash

    bind = op.get_bind()
    rows = bind.execute(sa.select(_RECORDS).order_by(_RECORDS.c.seq)).mappings().all()
    seq, prev = 0, GENESIS
    for row in rows:
        seq += 1
        values = {name: row.get(name) for name in HASHED_FIELDS if name not in ("seq", "prev_hash")}
        record = SimpleNamespace(**values, seq=seq, prev_hash=prev)
        digest = record_hash(record)  # type: ignore[arg-type]
        bind.execute(
            _RECORDS.update()
            .where(_RECORDS.c.seq == row["seq"])
            .values(seq=seq, prev_hash=prev, hash=digest)
        )
        prev = digest
    return seq, prev
