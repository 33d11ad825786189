"""client request ids on audit records

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 19:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from opsgate.db import append_only

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE (never a batch copy, which would drop the append-only triggers).
    # Existing records keep NULL, which the hash leaves out, so their hashes still verify.
    op.add_column(
        "audit_records", sa.Column("client_request_id", sa.String(length=128), nullable=True)
    )


def downgrade() -> None:
    # SQLite drops a column by copying the table: the triggers go with it and come back after.
    append_only.remove(op.get_bind())
    with op.batch_alter_table("audit_records", schema=None) as batch_op:
        batch_op.drop_column("client_request_id")
    append_only.install(op.get_bind())
