"""Scheduling rules: flavors, coalesce keys and holds, dedupe leaders, retry policy and
counters, (subject, process) back-offs, runner quarantine, timeouts, schedules.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "backoffs",
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("process", sa.String(length=128), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject", "process", name=op.f("pk_backoffs")),
    )
    op.create_table(
        "flavors",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("platform", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("min_pressure", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint("min_pressure >= 0", name=op.f("ck_flavors_min_pressure")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_flavors")),
        sa.UniqueConstraint("name", name=op.f("uq_flavors_name")),
    )
    with op.batch_alter_table("flavors", schema=None) as batch_op:
        batch_op.create_index("ix_flavors_platform", ["platform"], unique=False)

    op.create_table(
        "schedules",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("job_spec", sa.JSON(), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.Column("max_failures", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_due_at", sa.DateTime(), nullable=False),
        sa.Column("last_started_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "state IN ('ACTIVE', 'PAUSED', 'SUSPENDED')", name=op.f("ck_schedules_state")
        ),
        sa.CheckConstraint("interval_seconds > 0", name=op.f("ck_schedules_interval")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_schedules")),
        sa.UniqueConstraint("name", name=op.f("uq_schedules_name")),
    )
    op.create_table(
        "coalesce_holds",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_coalesce_holds_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_coalesce_holds")),
    )
    with op.batch_alter_table("coalesce_holds", schema=None) as batch_op:
        batch_op.create_index("ix_coalesce_holds_job_id", ["job_id"], unique=False)

    op.create_table(
        "job_coalesce_keys",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["jobs.id"],
            name=op.f("fk_job_coalesce_keys_job_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "key", name=op.f("pk_job_coalesce_keys")),
    )
    with op.batch_alter_table("job_coalesce_keys", schema=None) as batch_op:
        batch_op.create_index("ix_job_coalesce_keys_key", ["key"], unique=False)

    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(), nullable=True))

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "flavor_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column(
                "schedule_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column("subject", sa.String(length=128), server_default="", nullable=False)
        )
        batch_op.add_column(
            sa.Column("process", sa.String(length=128), server_default="", nullable=False)
        )
        batch_op.add_column(sa.Column("failure_backoff_seconds", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("retry_max_attempts", sa.Integer(), server_default="1", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "retry_initial_delay_seconds", sa.Float(), server_default="10", nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("retry_multiplier", sa.Float(), server_default="2", nullable=False)
        )
        batch_op.add_column(
            sa.Column("retry_max_delay_seconds", sa.Float(), server_default="3600", nullable=False)
        )
        batch_op.add_column(
            sa.Column("retry_max_lost", sa.Integer(), server_default="5", nullable=False)
        )
        batch_op.add_column(sa.Column("failures", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("losses", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("max_wait_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max_run_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_jobs_dedupe_key",
            ["dedupe_key", "id"],
            unique=False,
            sqlite_where=sa.text("dedupe_key IS NOT NULL"),
            postgresql_where=sa.text("dedupe_key IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_jobs_expires_at",
            ["expires_at"],
            unique=False,
            sqlite_where=sa.text("state IN ('NOTICED', 'QUEUED') AND expires_at IS NOT NULL"),
            postgresql_where=sa.text("state IN ('NOTICED', 'QUEUED') AND expires_at IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_jobs_finished_at",
            ["finished_at"],
            unique=False,
            sqlite_where=sa.text("finished_at IS NOT NULL"),
            postgresql_where=sa.text("finished_at IS NOT NULL"),
        )
        batch_op.create_index(
            "ix_jobs_flavor_id_unfinished",
            ["flavor_id"],
            unique=False,
            sqlite_where=sa.text("state IN ('NOTICED', 'QUEUED', 'BUILDING')"),
            postgresql_where=sa.text("state IN ('NOTICED', 'QUEUED', 'BUILDING')"),
        )
        batch_op.create_index(
            "ix_jobs_subject_process",
            ["subject", "process", "state"],
            unique=False,
            sqlite_where=sa.text("subject <> ''"),
            postgresql_where=sa.text("subject <> ''"),
        )
        batch_op.create_index(
            "uq_jobs_dedupe_key_leader",
            ["dedupe_key"],
            unique=True,
            sqlite_where=sa.text("state IN ('QUEUED', 'BUILDING') AND dedupe_key IS NOT NULL"),
            postgresql_where=sa.text("state IN ('QUEUED', 'BUILDING') AND dedupe_key IS NOT NULL"),
        )
        batch_op.create_index(
            "uq_jobs_schedule_id_pending",
            ["schedule_id"],
            unique=True,
            sqlite_where=sa.text(
                "state IN ('NOTICED', 'QUEUED', 'BUILDING') AND schedule_id IS NOT NULL"
            ),
            postgresql_where=sa.text(
                "state IN ('NOTICED', 'QUEUED', 'BUILDING') AND schedule_id IS NOT NULL"
            ),
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_flavor_id_flavors"), "flavors", ["flavor_id"], ["id"]
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_schedule_id_schedules"), "schedules", ["schedule_id"], ["id"]
        )

    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("lost_in_row", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("quarantines", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("quarantined_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runners", schema=None) as batch_op:
        batch_op.drop_column("quarantined_until")
        batch_op.drop_column("quarantines")
        batch_op.drop_column("lost_in_row")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_schedule_id_schedules"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_jobs_flavor_id_flavors"), type_="foreignkey")
        batch_op.drop_index(
            "uq_jobs_schedule_id_pending",
            sqlite_where=sa.text(
                "state IN ('NOTICED', 'QUEUED', 'BUILDING') AND schedule_id IS NOT NULL"
            ),
            postgresql_where=sa.text(
                "state IN ('NOTICED', 'QUEUED', 'BUILDING') AND schedule_id IS NOT NULL"
            ),
        )
        batch_op.drop_index(
            "uq_jobs_dedupe_key_leader",
            sqlite_where=sa.text("state IN ('QUEUED', 'BUILDING') AND dedupe_key IS NOT NULL"),
            postgresql_where=sa.text("state IN ('QUEUED', 'BUILDING') AND dedupe_key IS NOT NULL"),
        )
        batch_op.drop_index("ix_jobs_subject_process")
        batch_op.drop_index(
            "ix_jobs_flavor_id_unfinished",
            sqlite_where=sa.text("state IN ('NOTICED', 'QUEUED', 'BUILDING')"),
            postgresql_where=sa.text("state IN ('NOTICED', 'QUEUED', 'BUILDING')"),
        )
        batch_op.drop_index(
            "ix_jobs_finished_at",
            sqlite_where=sa.text("finished_at IS NOT NULL"),
            postgresql_where=sa.text("finished_at IS NOT NULL"),
        )
        batch_op.drop_index(
            "ix_jobs_expires_at",
            sqlite_where=sa.text("state IN ('NOTICED', 'QUEUED') AND expires_at IS NOT NULL"),
            postgresql_where=sa.text("state IN ('NOTICED', 'QUEUED') AND expires_at IS NOT NULL"),
        )
        batch_op.drop_index("ix_jobs_dedupe_key")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("max_run_seconds")
        batch_op.drop_column("max_wait_seconds")
        batch_op.drop_column("losses")
        batch_op.drop_column("failures")
        batch_op.drop_column("retry_max_lost")
        batch_op.drop_column("retry_max_delay_seconds")
        batch_op.drop_column("retry_multiplier")
        batch_op.drop_column("retry_initial_delay_seconds")
        batch_op.drop_column("retry_max_attempts")
        batch_op.drop_column("failure_backoff_seconds")
        batch_op.drop_column("process")
        batch_op.drop_column("subject")
        batch_op.drop_column("schedule_id")
        batch_op.drop_column("flavor_id")

    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_column("deadline_at")

    with op.batch_alter_table("job_coalesce_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_job_coalesce_keys_key")

    op.drop_table("job_coalesce_keys")
    with op.batch_alter_table("coalesce_holds", schema=None) as batch_op:
        batch_op.drop_index("ix_coalesce_holds_job_id")

    op.drop_table("coalesce_holds")
    op.drop_table("schedules")
    with op.batch_alter_table("flavors", schema=None) as batch_op:
        batch_op.drop_index("ix_flavors_platform")

    op.drop_table("flavors")
    op.drop_table("backoffs")
