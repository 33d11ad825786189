"""cumulative usage per target and customer, pending approvals counted

Usage events record the target, the customer it belongs to and the approval request that
holds the use, so that policy conditions can add up a target's, a customer's and an actor's
requests (core/actions/aggregates.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 19:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("target", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("customer", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("approval_id", sa.String(length=40), nullable=True))
        batch_op.create_index(
            "ix_usage_events_target_action_time", ["target", "action", "occurred_at"], unique=False
        )
        batch_op.create_index(
            "ix_usage_events_customer_action_time",
            ["customer", "action", "occurred_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_events", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_events_customer_action_time")
        batch_op.drop_index("ix_usage_events_target_action_time")
        batch_op.drop_column("approval_id")
        batch_op.drop_column("customer")
        batch_op.drop_column("target")
