"""Distributor executions, raw job data and backend health (SPEC §3, §7).

Revision ID: 0005
Revises: 0004b
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNRELEASED = "distributor <> '' AND released_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(
            sa.Column("distributor", sa.String(length=128), server_default="", nullable=False)
        )
        batch.add_column(sa.Column("config_snapshot", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("token_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("backend_token", sa.Text(), server_default="", nullable=False))
        batch.add_column(sa.Column("info_url", sa.Text(), server_default="", nullable=False))
        batch.add_column(sa.Column("poll_at", sa.DateTime(), nullable=True))
        batch.add_column(
            sa.Column("poll_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch.add_column(sa.Column("released_at", sa.DateTime(), nullable=True))
    op.create_index(
        "ix_executions_distributor_unreleased",
        "executions",
        ["distributor", "poll_at"],
        unique=False,
        sqlite_where=sa.text(_UNRELEASED),
        postgresql_where=sa.text(_UNRELEASED),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("raw", sa.JSON(), nullable=True))
    op.create_table(
        "distributor_health",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("up", sa.Boolean(), nullable=False),
        sa.Column("down_since", sa.DateTime(), nullable=True),
        sa.Column("cause", sa.Text(), server_default="", nullable=False),
        sa.Column("next_probe_at", sa.DateTime(), nullable=True),
        sa.Column("probe_interval_seconds", sa.Float(), server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_distributor_health")),
    )


def downgrade() -> None:
    op.drop_table("distributor_health")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("raw")
    op.drop_index("ix_executions_distributor_unreleased", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        for column in (
            "released_at",
            "poll_failures",
            "poll_at",
            "info_url",
            "backend_token",
            "token_hash",
            "config_snapshot",
            "distributor",
        ):
            batch.drop_column(column)
