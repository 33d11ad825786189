"""token ownership (service accounts, who minted a token where) and refused-authentication windows

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 19:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import opsgate.db.base

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("is_service_account", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("created_via", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("created_os_user", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("created_host", sa.String(length=255), nullable=True))
    op.create_table(
        "auth_refusal_windows",
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("window_start", opsgate.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("refusals", sa.Integer(), nullable=False),
        sa.Column("audited", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("source", "window_start", name=op.f("pk_auth_refusal_windows")),
    )
    with op.batch_alter_table("auth_refusal_windows", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_auth_refusal_windows_window_start"), ["window_start"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("auth_refusal_windows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_refusal_windows_window_start"))
    op.drop_table("auth_refusal_windows")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("created_host")
        batch_op.drop_column("created_os_user")
        batch_op.drop_column("created_via")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("is_service_account")
