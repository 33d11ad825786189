"""approvals

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 11:32:40.794454
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import opsgate.db.base

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "approval_requests",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("action", sa.String(length=128), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("payload_hash", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("requester_id", sa.String(length=40), nullable=False),
        sa.Column("requester_name", sa.String(length=200), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("policy_version", sa.String(length=64), nullable=False),
        sa.Column(
            "target_snapshot",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("target_version", sa.Integer(), nullable=False),
        sa.Column(
            "proposed_change",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "rule",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column(
            "approver_roles",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_detail", sa.Text(), nullable=True),
        sa.Column("created_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("executed_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("execution_request_id", sa.String(length=128), nullable=True),
        sa.Column(
            "result",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_requests")),
    )
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_approval_requests_action"), ["action"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_approval_requests_execution_request_id"),
            ["execution_request_id"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_approval_requests_request_id"), ["request_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_approval_requests_requester_id"), ["requester_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_approval_requests_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_approval_requests_target"), ["target"], unique=False)

    op.create_table(
        "approval_decisions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("approval_id", sa.String(length=40), nullable=False),
        sa.Column("approver_id", sa.String(length=40), nullable=False),
        sa.Column("approver_name", sa.String(length=200), nullable=False),
        sa.Column(
            "approver_roles",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("decided_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_decisions_approval_id_approval_requests"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_decisions")),
        sa.UniqueConstraint(
            "approval_id", "approver_id", name=op.f("uq_approval_decisions_approval_id")
        ),
    )
    with op.batch_alter_table("approval_decisions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_approval_decisions_approver_id"), ["approver_id"], unique=False
        )

    op.create_table(
        "approval_views",
        sa.Column("approval_id", sa.String(length=40), nullable=False),
        sa.Column("viewer_id", sa.String(length=40), nullable=False),
        sa.Column("first_viewed_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["approval_requests.id"],
            name=op.f("fk_approval_views_approval_id_approval_requests"),
        ),
        sa.PrimaryKeyConstraint("approval_id", "viewer_id", name=op.f("pk_approval_views")),
    )
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("execution_request_id", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("approval_id", sa.String(length=40), nullable=True))
        batch_op.create_index("ix_audit_records_approval_id", ["approval_id", "seq"], unique=False)
        batch_op.create_index(
            "ix_audit_records_execution_request_id", ["execution_request_id"], unique=False
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), server_default="1", nullable=False))


def downgrade() -> None:

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("version")

    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_records_execution_request_id")
        batch_op.drop_index("ix_audit_records_approval_id")
        batch_op.drop_column("approval_id")
        batch_op.drop_column("execution_request_id")

    op.drop_table("approval_views")
    with op.batch_alter_table("approval_decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_decisions_approver_id"))

    op.drop_table("approval_decisions")
    with op.batch_alter_table("approval_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_approval_requests_target"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_status"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_requester_id"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_request_id"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_execution_request_id"))
        batch_op.drop_index(batch_op.f("ix_approval_requests_action"))

    op.drop_table("approval_requests")
