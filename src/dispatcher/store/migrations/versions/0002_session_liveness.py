"""Session liveness: last heartbeat and detachment (re-attach grace).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runner_sessions") as batch_op:
        batch_op.add_column(sa.Column("last_seen_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("detached_at", sa.DateTime(), nullable=True))
    op.execute("UPDATE runner_sessions SET last_seen_at = opened_at")
    with op.batch_alter_table("runner_sessions") as batch_op:
        batch_op.alter_column("last_seen_at", existing_type=sa.DateTime(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("runner_sessions") as batch_op:
        batch_op.drop_column("detached_at")
        batch_op.drop_column("last_seen_at")
