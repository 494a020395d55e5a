"""Initial schema: jobs, job labels, executions, runners, sessions, replicas, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 03:57:35.423280
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("queue", sa.String(length=128), server_default="", nullable=False),
        sa.Column("platform", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("command", sa.JSON(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("not_before", sa.DateTime(), nullable=False),
        sa.Column("coalesce_keys", sa.JSON(), nullable=False),
        sa.Column("dedupe_key", sa.String(length=128), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("origin_time", sa.DateTime(), nullable=True),
        sa.Column("distributor", sa.String(length=128), server_default="", nullable=False),
        sa.Column("on_lost", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("info", sa.Text(), server_default="", nullable=False),
        sa.Column("attempt", sa.Integer(), server_default="0", nullable=False),
        sa.Column("current_execution_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "duplicate_of", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("cancel_requested_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint(
            "on_lost IN ('REQUEUE', 'IRRECOVERABLE', 'REQUEUE_UNTIL_COMMITTED')",
            name=op.f("ck_jobs_on_lost"),
        ),
        sa.CheckConstraint(
            "state <> 'BUILDING' OR current_execution_id IS NOT NULL",
            name=op.f("ck_jobs_building_has_execution"),
        ),
        sa.CheckConstraint(
            "state IN ('NOTICED', 'QUEUED', 'BUILDING', 'SUCCEEDED', 'FAILED', 'IRRECOVERABLE', 'CANCELLED', 'NOT_FOR_US')",
            name=op.f("ck_jobs_state"),
        ),
        sa.CheckConstraint("attempt >= 0", name=op.f("ck_jobs_attempt")),
        sa.ForeignKeyConstraint(
            ["duplicate_of"], ["jobs.id"], name=op.f("fk_jobs_duplicate_of_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_claim_order",
            ["platform", sa.literal_column("priority DESC"), "not_before", "id"],
            unique=False,
            sqlite_where=sa.text("state = 'QUEUED'"),
            postgresql_where=sa.text("state = 'QUEUED'"),
        )
        batch_op.create_index(
            "ix_jobs_due",
            ["not_before"],
            unique=False,
            sqlite_where=sa.text("state = 'NOTICED'"),
            postgresql_where=sa.text("state = 'NOTICED'"),
        )
        batch_op.create_index("ix_jobs_state", ["state"], unique=False)

    op.create_table(
        "replicas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replicas")),
    )
    op.create_table(
        "runners",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("platform", sa.String(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=128), server_default="", nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.CheckConstraint(
            "state IN ('ONLINE', 'DRAINING', 'OFFLINE')", name=op.f("ck_runners_state")
        ),
        sa.CheckConstraint("capacity >= 1", name=op.f("ck_runners_capacity")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_runners")),
    )
    op.create_table(
        "job_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("execution_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("actor", sa.String(length=160), nullable=False),
        sa.Column("cause", sa.Text(), server_default="", nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.create_index("ix_job_events_job_id", ["job_id", "id"], unique=False)

    op.create_table(
        "job_labels",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_labels_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "label", name=op.f("pk_job_labels")),
    )
    with op.batch_alter_table("job_labels", schema=None) as batch_op:
        batch_op.create_index("ix_job_labels_label", ["label", "job_id"], unique=False)

    op.create_table(
        "runner_sessions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("runner_name", sa.String(length=128), nullable=False),
        sa.Column("replica_id", sa.String(length=64), nullable=False),
        sa.Column("resume_token_hash", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["runner_name"], ["runners.name"], name=op.f("fk_runner_sessions_runner_name_runners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runner_sessions")),
    )
    with op.batch_alter_table("runner_sessions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_runner_sessions_open",
            ["replica_id"],
            unique=False,
            sqlite_where=sa.text("closed_at IS NULL"),
            postgresql_where=sa.text("closed_at IS NULL"),
        )

    op.create_table(
        "executions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("runner_name", sa.String(length=128), server_default="", nullable=False),
        sa.Column(
            "session_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("accepted_at", sa.DateTime(), nullable=True),
        sa.Column("last_heartbeat_at", sa.DateTime(), nullable=True),
        sa.Column("committed_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("info", sa.Text(), server_default="", nullable=False),
        sa.Column("logtail", sa.Text(), server_default="", nullable=False),
        sa.Column("progress_percent", sa.Integer(), server_default="-1", nullable=False),
        sa.Column("result", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('SUCCEEDED', 'FAILED', 'IRRECOVERABLE', 'CANCELLED', 'LOST') OR outcome IS NULL",
            name=op.f("ck_executions_outcome"),
        ),
        sa.CheckConstraint(
            "(outcome IS NULL) = (finished_at IS NULL)",
            name=op.f("ck_executions_finished_has_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_executions_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["runner_sessions.id"],
            name=op.f("fk_executions_session_id_runner_sessions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_executions")),
    )
    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_executions_open_by_session",
            ["session_id"],
            unique=False,
            sqlite_where=sa.text("finished_at IS NULL"),
            postgresql_where=sa.text("finished_at IS NULL"),
        )
        batch_op.create_index("uq_executions_job_id_number", ["job_id", "number"], unique=True)


def downgrade() -> None:

    with op.batch_alter_table("executions", schema=None) as batch_op:
        batch_op.drop_index("uq_executions_job_id_number")
        batch_op.drop_index(
            "ix_executions_open_by_session",
            sqlite_where=sa.text("finished_at IS NULL"),
            postgresql_where=sa.text("finished_at IS NULL"),
        )

    op.drop_table("executions")
    with op.batch_alter_table("runner_sessions", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_runner_sessions_open",
            sqlite_where=sa.text("closed_at IS NULL"),
            postgresql_where=sa.text("closed_at IS NULL"),
        )

    op.drop_table("runner_sessions")
    with op.batch_alter_table("job_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_job_labels_label")

    op.drop_table("job_labels")
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.drop_index("ix_job_events_job_id")

    op.drop_table("job_events")
    op.drop_table("runners")
    op.drop_table("replicas")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state")
        batch_op.drop_index(
            "ix_jobs_due",
            sqlite_where=sa.text("state = 'NOTICED'"),
            postgresql_where=sa.text("state = 'NOTICED'"),
        )
        batch_op.drop_index(
            "ix_jobs_claim_order",
            sqlite_where=sa.text("state = 'QUEUED'"),
            postgresql_where=sa.text("state = 'QUEUED'"),
        )

    op.drop_table("jobs")
