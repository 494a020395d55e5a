"""SQLAlchemy tables: the schema of record. Alembic migrations must produce exactly this
(tests/store/test_migrations.py checks it on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from dispatcher.domain.model import RunnerState, ScheduleState
from dispatcher.domain.states import JobState, OnLostPolicy, Outcome
from dispatcher.domain.tokens import Role

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def sqlite_time(value: datetime | None) -> str | None:
    """A time as SQLite stores it: naive UTC text, what UtcDateTime writes and reads. For
    the hot statements that hand SQLite plain rows (store/sql.py)."""
    global _last_written
    if value is None:
        return None
    # A batch writes one "now" into every row (events, moves, ends): the same object.
    written = _last_written
    if value is written[0]:
        return written[1]
    if value.tzinfo is UTC:  # nearly always: skip the conversion
        text = value.replace(tzinfo=None).isoformat(" ", "microseconds")
    elif value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use an aware UTC time")
    else:
        text = value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
    # One tuple, replaced whole: threads running transactions read a consistent pair.
    _last_written = (value, text)
    return text


_last_written: tuple[datetime | None, str] = (None, "")


class UtcDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones); always read back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC time")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)

    # SQLite stores the text SQLAlchemy's DateTime writes ("YYYY-MM-DD HH:MM:SS.ffffff");
    # these write and read that same text with the C isoformat functions, not through
    # the generic formatting and regular expression: times are on every hot statement.

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        return sqlite_time

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)

        # The last text read and its time: the jobs of one submit share their times, and
        # a claim reads them one after another. One tuple, replaced whole (threads).
        last: tuple[str | None, datetime | None] = (None, None)

        def process(value: str | None) -> datetime | None:
            nonlocal last
            if value is None:
                return None
            text, at = last
            if value != text:
                at = datetime.fromisoformat(value).replace(tzinfo=UTC)
                last = (value, at)
            return at

        return process


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
Id = BigInteger().with_variant(Integer, "sqlite")


def _one_of(column: str, values: type[Any]) -> str:
    quoted = ", ".join(f"'{v.value}'" for v in values)
    return f"{column} IN ({quoted})"


jobs = Table(
    "jobs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("queue", String(128), nullable=False, server_default=""),
    Column("platform", String(128), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("command", JSON, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("not_before", UtcDateTime, nullable=False),
    Column("coalesce_keys", JSON, nullable=False),
    Column("dedupe_key", String(128)),
    Column("idempotency_key", String(128), unique=True),
    Column("origin_time", UtcDateTime),
    Column("distributor", String(128), nullable=False, server_default=""),
    Column("on_lost", String(32), nullable=False),
    Column("state", String(16), nullable=False),
    Column("info", Text, nullable=False, server_default=""),
    Column("attempt", Integer, nullable=False, server_default="0"),
    # Not a foreign key: executions point at jobs, and a cycle would complicate every
    # insert. The store keeps it equal to the newest execution of the job, or NULL.
    Column("current_execution_id", BigInteger),
    Column("duplicate_of", Id, ForeignKey("jobs.id")),
    Column("cancel_requested_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime),
    # Scheduling rules (SPEC §5): flavor, retry policy and counters, back-off pair,
    # timeouts, the schedule that made the job.
    Column("flavor_id", Id, ForeignKey("flavors.id")),
    Column("schedule_id", Id, ForeignKey("schedules.id")),
    Column("subject", String(128), nullable=False, server_default=""),
    Column("process", String(128), nullable=False, server_default=""),
    Column("failure_backoff_seconds", Float),
    Column("retry_max_attempts", Integer, nullable=False, server_default="1"),
    Column("retry_initial_delay_seconds", Float, nullable=False, server_default="10"),
    Column("retry_multiplier", Float, nullable=False, server_default="2"),
    Column("retry_max_delay_seconds", Float, nullable=False, server_default="3600"),
    Column("retry_max_lost", Integer, nullable=False, server_default="5"),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("losses", Integer, nullable=False, server_default="0"),
    Column("max_wait_seconds", Float),
    Column("max_run_seconds", Float),
    # created_at + max_wait: a job still waiting then is FAILED ("expired").
    Column("expires_at", UtcDateTime),
    # Raw JSON a backend reported about the job (SPEC §7 external), merged key by key.
    Column("raw", JSON),
    CheckConstraint(_one_of("state", JobState), name="state"),
    CheckConstraint(_one_of("on_lost", OnLostPolicy), name="on_lost"),
    CheckConstraint("attempt >= 0", name="attempt"),
    # A BUILDING job always has its execution; no other state may hold one open.
    CheckConstraint(
        "state <> 'BUILDING' OR current_execution_id IS NOT NULL", name="building_has_execution"
    ),
)

# The claim order of SPEC §5.2, for waiting jobs only: choosing the next job reads the
# head of this index instead of sorting the queue.
Index(
    "ix_jobs_claim_order",
    jobs.c.platform,
    jobs.c.priority.desc(),
    jobs.c.not_before,
    jobs.c.id,
    sqlite_where=text("state = 'QUEUED'"),
    postgresql_where=text("state = 'QUEUED'"),
)
Index("ix_jobs_state", jobs.c.state)
Index(
    "ix_jobs_due",
    jobs.c.not_before,
    sqlite_where=text("state = 'NOTICED'"),
    postgresql_where=text("state = 'NOTICED'"),
)
_UNFINISHED = "state IN ('NOTICED', 'QUEUED', 'BUILDING')"
# SPEC §5.4: of the jobs sharing a dedupe key, at most one is runnable or running; the
# others wait behind it. The database refuses a second one, whoever races.
Index(
    "uq_jobs_dedupe_key_leader",
    jobs.c.dedupe_key,
    unique=True,
    sqlite_where=text("state IN ('QUEUED', 'BUILDING') AND dedupe_key IS NOT NULL"),
    postgresql_where=text("state IN ('QUEUED', 'BUILDING') AND dedupe_key IS NOT NULL"),
)
# Partial indexes where most jobs have no value: a job that never sets them costs no
# index write on each of its moves.
Index(
    "ix_jobs_dedupe_key",
    jobs.c.dedupe_key,
    jobs.c.id,
    sqlite_where=text("dedupe_key IS NOT NULL"),
    postgresql_where=text("dedupe_key IS NOT NULL"),
)
# Exactly one pending job per schedule (SPEC §3).
Index(
    "uq_jobs_schedule_id_pending",
    jobs.c.schedule_id,
    unique=True,
    sqlite_where=text(f"{_UNFINISHED} AND schedule_id IS NOT NULL"),
    postgresql_where=text(f"{_UNFINISHED} AND schedule_id IS NOT NULL"),
)
# Pressure counts unfinished jobs per flavor.
Index(
    "ix_jobs_flavor_id_unfinished",
    jobs.c.flavor_id,
    sqlite_where=text(_UNFINISHED),
    postgresql_where=text(_UNFINISHED),
)
Index(
    "ix_jobs_expires_at",
    jobs.c.expires_at,
    sqlite_where=text("state IN ('NOTICED', 'QUEUED') AND expires_at IS NOT NULL"),
    postgresql_where=text("state IN ('NOTICED', 'QUEUED') AND expires_at IS NOT NULL"),
)
Index(
    "ix_jobs_subject_process",
    jobs.c.subject,
    jobs.c.process,
    jobs.c.state,
    sqlite_where=text("subject <> ''"),
    postgresql_where=text("subject <> ''"),
)
Index(
    "ix_jobs_finished_at",
    jobs.c.finished_at,
    sqlite_where=text("finished_at IS NOT NULL"),
    postgresql_where=text("finished_at IS NOT NULL"),
)

# A job's coalesce keys; a key held in coalesce_holds blocks every other job with it.
job_coalesce_keys = Table(
    "job_coalesce_keys",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(128), primary_key=True),
)
Index("ix_job_coalesce_keys_key", job_coalesce_keys.c.key)

# SPEC §5.4: one row per coalesce key of a BUILDING job. The primary key is the rule
# "never two BUILDING jobs sharing a key", enforced by the database.
coalesce_holds = Table(
    "coalesce_holds",
    metadata,
    Column("key", String(128), primary_key=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
)
Index("ix_coalesce_holds_job_id", coalesce_holds.c.job_id)

flavors = Table(
    "flavors",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("platform", String(128), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("priority", Integer, nullable=False, server_default="0"),
    Column("enabled", Boolean, nullable=False),
    Column("min_pressure", Integer, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint("min_pressure >= 0", name="min_pressure"),
)
Index("ix_flavors_platform", flavors.c.platform)

schedules = Table(
    "schedules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    # The template of every job the schedule makes (store/schedules.py encodes it).
    Column("job_spec", JSON, nullable=False),
    Column("interval_seconds", Float, nullable=False),
    Column("max_failures", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("consecutive_failures", Integer, nullable=False, server_default="0"),
    Column("next_due_at", UtcDateTime, nullable=False),
    Column("last_started_at", UtcDateTime),
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint(_one_of("state", ScheduleState), name="state"),
    CheckConstraint("interval_seconds > 0", name="interval"),
)

# (subject, process) back-offs: an upsert, so at most one row per pair (SPEC §3).
backoffs = Table(
    "backoffs",
    metadata,
    Column("subject", String(128), primary_key=True),
    Column("process", String(128), primary_key=True),
    Column("until", UtcDateTime, nullable=False),
    Column("cause", Text, nullable=False),
    Column("job_id", BigInteger),
    Column("created_at", UtcDateTime, nullable=False),
)

job_labels = Table(
    "job_labels",
    metadata,
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("label", String(128), primary_key=True),
)
Index("ix_job_labels_label", job_labels.c.label, job_labels.c.job_id)

runners = Table(
    "runners",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("platform", String(128), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("version", String(128), nullable=False, server_default=""),
    Column("last_seen_at", UtcDateTime, nullable=False),
    # Quarantine (SPEC §5.6): executions lost in a row since the last good report, and
    # until when the runner gets no work.
    Column("lost_in_row", Integer, nullable=False, server_default="0"),
    Column("quarantines", Integer, nullable=False, server_default="0"),
    Column("quarantined_until", UtcDateTime),
    CheckConstraint(_one_of("state", RunnerState), name="state"),
    CheckConstraint("capacity >= 1", name="capacity"),
)
# The few runners in quarantine, or draining (migration 0006).
Index(
    "ix_runners_quarantined",
    runners.c.quarantined_until,
    sqlite_where=text("quarantined_until IS NOT NULL"),
    postgresql_where=text("quarantined_until IS NOT NULL"),
)
Index(
    "ix_runners_draining",
    runners.c.name,
    sqlite_where=text("state = 'DRAINING'"),
    postgresql_where=text("state = 'DRAINING'"),
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    # Survivors take over this replica's sessions once lease_until has passed.
    Column("lease_until", UtcDateTime, nullable=False),
)

runner_sessions = Table(
    "runner_sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("runner_name", String(128), ForeignKey("runners.name"), nullable=False),
    Column("replica_id", String(64), nullable=False),
    Column("resume_token_hash", String(64), nullable=False),
    Column("opened_at", UtcDateTime, nullable=False),
    # The last heartbeat; a session silent for longer than the heartbeat timeout is dead.
    Column("last_seen_at", UtcDateTime, nullable=False),
    # The stream is gone but the runner may re-attach with its resume token until the
    # grace ends; its executions stay bound meanwhile.
    Column("detached_at", UtcDateTime),
    Column("closed_at", UtcDateTime),
    Column("close_reason", Text),
)
Index(
    "ix_runner_sessions_open",
    runner_sessions.c.replica_id,
    sqlite_where=text("closed_at IS NULL"),
    postgresql_where=text("closed_at IS NULL"),
)
# The sweep reads silence (by last heartbeat) and the end of the re-attach grace (by
# detach time) off these, whatever the number of idle streams (migration 0006).
_ATTACHED = "closed_at IS NULL AND detached_at IS NULL"
Index(
    "ix_runner_sessions_attached",
    runner_sessions.c.replica_id,
    runner_sessions.c.last_seen_at,
    sqlite_where=text(_ATTACHED),
    postgresql_where=text(_ATTACHED),
)
_DETACHED = "closed_at IS NULL AND detached_at IS NOT NULL"
Index(
    "ix_runner_sessions_detached",
    runner_sessions.c.detached_at,
    sqlite_where=text(_DETACHED),
    postgresql_where=text(_DETACHED),
)
Index(
    "ix_runner_sessions_open_by_runner",
    runner_sessions.c.runner_name,
    sqlite_where=text("closed_at IS NULL"),
    postgresql_where=text("closed_at IS NULL"),
)

executions = Table(
    "executions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("number", Integer, nullable=False),
    Column("runner_name", String(128), nullable=False, server_default=""),
    Column("session_id", Id, ForeignKey("runner_sessions.id")),
    Column("started_at", UtcDateTime, nullable=False),
    Column("accepted_at", UtcDateTime),
    Column("last_heartbeat_at", UtcDateTime),
    Column("committed_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("outcome", String(16)),
    Column("info", Text, nullable=False, server_default=""),
    Column("logtail", Text, nullable=False, server_default=""),
    Column("progress_percent", Integer, nullable=False, server_default="-1"),
    Column("result", LargeBinary, nullable=False),
    # started_at + the job's max_run: cancelled and FAILED past it.
    Column("deadline_at", UtcDateTime),
    # Distributor executions (SPEC §7); empty/NULL for runner executions. The config in
    # force when it started, the SHA-256 of its notification token (never the token),
    # the adapter's own handle for it, and when the dispatcher polls it next.
    Column("distributor", String(128), nullable=False, server_default=""),
    Column("config_snapshot", JSON),
    Column("token_hash", String(64)),
    Column("backend_token", Text, nullable=False, server_default=""),
    Column("info_url", Text, nullable=False, server_default=""),
    Column("poll_at", UtcDateTime),
    Column("poll_failures", Integer, nullable=False, server_default="0"),
    # Set once the backend was told to stop (or said it ended): nothing more to send it.
    Column("released_at", UtcDateTime),
    CheckConstraint(_one_of("outcome", Outcome) + " OR outcome IS NULL", name="outcome"),
    CheckConstraint("(outcome IS NULL) = (finished_at IS NULL)", name="finished_has_outcome"),
)
Index("uq_executions_job_id_number", executions.c.job_id, executions.c.number, unique=True)
Index(
    "ix_executions_open_by_session",
    executions.c.session_id,
    sqlite_where=text("finished_at IS NULL"),
    postgresql_where=text("finished_at IS NULL"),
)

# The distributor loop reads its open executions (to count, poll and cancel them) and
# its finished ones not yet released, by distributor name.
Index(
    "ix_executions_distributor_unreleased",
    executions.c.distributor,
    executions.c.poll_at,
    sqlite_where=text("distributor <> '' AND released_at IS NULL"),
    postgresql_where=text("distributor <> '' AND released_at IS NULL"),
)

# Backend health (SPEC §3): one row per distributor instance that was ever down. No row,
# or up, means its jobs may run; while down they wait and the backend is probed at
# growing intervals.
distributor_health = Table(
    "distributor_health",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("up", Boolean, nullable=False),
    Column("down_since", UtcDateTime),
    Column("cause", Text, nullable=False, server_default=""),
    Column("next_probe_at", UtcDateTime),
    Column("probe_interval_seconds", Float, nullable=False, server_default="0"),
    Column("updated_at", UtcDateTime, nullable=False),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("job_id", Id, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
    Column("execution_id", BigInteger),
    Column("kind", String(32), nullable=False),
    Column("from_state", String(16)),
    Column("to_state", String(16)),
    Column("actor", String(160), nullable=False),
    Column("cause", Text, nullable=False, server_default=""),
    Column("at", UtcDateTime, nullable=False),
)
Index("ix_job_events_job_id", job_events.c.job_id, job_events.c.id)

tokens = Table(
    "tokens",
    metadata,
    # Part of the secret (dsp_<id>_...), so a check reads one row by its key.
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    # SHA-256 of the secret's random part (hex); the secret itself is never stored.
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("last_used_at", UtcDateTime),
    CheckConstraint(_one_of("role", Role), name="role"),
)
