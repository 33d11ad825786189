"""trace ids, backend calls, webhook outbox

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 14:08:13.671677
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import opsgate.db.base
from opsgate.db import append_only

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backend_calls",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("execution_request_id", sa.String(length=128), nullable=True),
        sa.Column("approval_id", sa.String(length=40), nullable=True),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column(
            "request",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "response",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reconciled_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backend_calls")),
    )
    with op.batch_alter_table("backend_calls", schema=None) as batch_op:
        batch_op.create_index(
            "ix_backend_calls_execution_request_id", ["execution_request_id"], unique=False
        )
        batch_op.create_index("ix_backend_calls_idempotency_key", ["idempotency_key"], unique=False)
        batch_op.create_index("ix_backend_calls_request_id", ["request_id"], unique=False)
        batch_op.create_index(
            "ix_backend_calls_status_started", ["status", "started_at"], unique=False
        )

    op.create_table(
        "outbox_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("subscription", sa.String(length=64), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("trace_id", sa.String(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("locked_until", opsgate.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
    )
    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_events_event_id", ["event_id"], unique=False)
        batch_op.create_index("ix_outbox_events_request_id", ["request_id"], unique=False)
        batch_op.create_index(
            "ix_outbox_events_status_next", ["status", "next_attempt_at"], unique=False
        )

    # Plain ALTER TABLE (never a batch copy, which would drop the append-only triggers).
    op.add_column("audit_records", sa.Column("trace_id", sa.String(length=32), nullable=True))
    op.create_index("ix_audit_records_trace_id", "audit_records", ["trace_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audit_records_trace_id", table_name="audit_records")
    # SQLite drops a column by copying the table: the triggers go with it and come back after.
    append_only.remove(op.get_bind())
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_column("trace_id")
    append_only.install(op.get_bind())

    with op.batch_alter_table("outbox_events", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_events_status_next")
        batch_op.drop_index("ix_outbox_events_request_id")
        batch_op.drop_index("ix_outbox_events_event_id")

    op.drop_table("outbox_events")
    with op.batch_alter_table("backend_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_backend_calls_status_started")
        batch_op.drop_index("ix_backend_calls_request_id")
        batch_op.drop_index("ix_backend_calls_idempotency_key")
        batch_op.drop_index("ix_backend_calls_execution_request_id")

    op.drop_table("backend_calls")
