"""step-up grants: a fresh proof of identity for money-moving approvals through the API

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 19:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import opsgate.db.base

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "step_up_grants",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("credential_id", sa.String(length=40), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("created_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", opsgate.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("used_for", sa.String(length=40), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_step_up_grants_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_step_up_grants")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_step_up_grants_secret_hash")),
    )
    with op.batch_alter_table("step_up_grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_step_up_grants_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("step_up_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_step_up_grants_user_id"))

    op.drop_table("step_up_grants")
