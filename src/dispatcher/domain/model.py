"""The things dispatcher keeps (SPEC §3), as plain values."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dispatcher.domain.states import DEFAULT_ON_LOST, JobState, OnLostPolicy, Outcome


@dataclass(frozen=True)
class RetryPolicy:
    """How often a job may be tried again (SPEC §5.6). Failures its runner reports and
    executions lost by the infrastructure are counted apart: a crashing build machine
    must not spend the job's own failure budget."""

    # Runner-reported failures allowed before the job is FAILED; 1 means no retry.
    max_attempts: int = 1
    initial_delay: timedelta = timedelta(seconds=10)
    multiplier: float = 2.0
    max_delay: timedelta = timedelta(hours=1)
    # Executions lost (runner gone, heartbeat stale) before the job is FAILED.
    max_lost: int = 5


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class JobSpec:
    """What a submitter asks for. Validated by :func:`dispatcher.domain.validation.check_spec`."""

    platform: str
    command: tuple[str, ...] = ()
    queue: str = ""
    labels: frozenset[str] = frozenset()
    payload: bytes = b""
    priority: int = 0
    not_before: datetime | None = None
    coalesce_keys: frozenset[str] = frozenset()
    dedupe_key: str = ""
    idempotency_key: str = ""
    origin_time: datetime | None = None
    distributor: str = ""
    on_lost: OnLostPolicy = DEFAULT_ON_LOST
    retry: RetryPolicy = DEFAULT_RETRY
    # What the job works on and what it does to it; a failure may back off the pair.
    subject: str = ""
    process: str = ""
    # A runner-reported failure keeps every job on (subject, process) waiting this long.
    failure_backoff: timedelta | None = None
    # Never started within this long after submission: FAILED ("expired").
    max_wait: timedelta | None = None
    # Running longer than this: cancelled and FAILED ("timed out").
    max_run: timedelta | None = None


@dataclass(frozen=True)
class Execution:
    id: int
    job_id: int
    number: int
    runner: str
    session_id: int | None
    started_at: datetime
    last_heartbeat_at: datetime | None = None
    committed_at: datetime | None = None
    finished_at: datetime | None = None
    outcome: Outcome | None = None
    info: str = ""
    logtail: str = ""
    result: bytes = b""
    # Distributor executions (SPEC §7): the instance, and its page about the task.
    distributor: str = ""
    info_url: str = ""


@dataclass(frozen=True)
class JobEvent:
    id: int
    job_id: int
    execution_id: int | None
    kind: str
    from_state: JobState | None
    to_state: JobState | None
    actor: str
    cause: str
    at: datetime


@dataclass(frozen=True)
class Job:
    id: int
    spec: JobSpec
    state: JobState
    info: str
    attempt: int
    current_execution_id: int | None
    duplicate_of: int | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    runner: str = ""
    cancel_requested: bool = False
    executions: tuple[Execution, ...] = ()
    events: tuple[JobEvent, ...] = ()
    flavor: str = ""
    schedule: str = ""
    # Runner-reported failures and infrastructure losses so far (SPEC §5.6).
    failures: int = 0
    losses: int = 0
    # Raw JSON backends reported about the job, merged key by key (SPEC §7).
    raw: dict[str, Any] | None = None


class RunnerState(enum.StrEnum):
    ONLINE = "ONLINE"
    DRAINING = "DRAINING"
    OFFLINE = "OFFLINE"


@dataclass(frozen=True)
class RunnerHello:
    """What a runner says about itself when it connects."""

    name: str
    platform: str
    labels: frozenset[str]
    capacity: int
    version: str = ""
    resume_token: str = ""


@dataclass(frozen=True)
class Runner:
    name: str
    platform: str
    labels: frozenset[str]
    capacity: int
    state: RunnerState
    version: str
    last_seen_at: datetime
    building: int = 0
    # Gets no work until then: its executions kept being lost.
    quarantined_until: datetime | None = None


@dataclass(frozen=True)
class Assignment:
    """A job just bound to a runner session by a claim."""

    session_id: int
    execution_id: int
    job: Job


@dataclass(frozen=True)
class JobFilter:
    """What ListJobs may filter on; empty fields do not filter."""

    states: frozenset[JobState] = frozenset()
    queue: str = ""
    platform: str = ""
    labels: frozenset[str] = frozenset()
    runner: str = ""
    created_after: datetime | None = None
    created_before: datetime | None = None
    flavor: str = ""


@dataclass(frozen=True)
class Flavor:
    """A kind of build machine an autoscaler can start (SPEC §3, §5.1)."""

    name: str
    platform: str
    labels: frozenset[str] = frozenset()
    priority: int = 0
    enabled: bool = True
    min_pressure: int = 0

    def serves(self, platform: str, labels: frozenset[str]) -> bool:
        return self.platform == platform and labels <= self.labels


@dataclass(frozen=True)
class Pressure:
    """Unfinished jobs assigned to a flavor, never below its minimum (SPEC §5.9)."""

    flavor: str
    platform: str
    value: int
    unfinished: int
    enabled: bool


class ScheduleState(enum.StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"
    # Too many consecutive failures; an operator resumes it.
    SUSPENDED = "SUSPENDED"


@dataclass(frozen=True)
class ScheduleSpec:
    name: str
    job: JobSpec
    interval: timedelta
    # Suspended after this many consecutive failed runs.
    max_failures: int = 5


@dataclass(frozen=True)
class Schedule:
    spec: ScheduleSpec
    state: ScheduleState
    consecutive_failures: int
    next_due_at: datetime
    last_started_at: datetime | None
    pending_job_id: int | None


@dataclass(frozen=True)
class Backoff:
    """Jobs on (subject, process) wait until ``until`` (SPEC §3)."""

    subject: str
    process: str
    until: datetime
    cause: str
    job_id: int | None


@dataclass(frozen=True)
class Reason:
    """One concrete reason a waiting job is not running (SPEC §10 explain)."""

    code: str
    text: str
    until: datetime | None = None
    blocking_job_id: int | None = None


@dataclass(frozen=True)
class Explanation:
    job_id: int
    state: JobState
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Page:
    jobs: tuple[Job, ...]
    # Id of the last job returned when there may be more; None on the last page.
    next_after_id: int | None


@dataclass(frozen=True)
class ResultReport:
    """A runner's report that an execution ended."""

    execution_id: int
    outcome: Outcome
    info: str = ""
    data: bytes = b""
    logtail: str = ""


@dataclass(frozen=True)
class Verdict:
    """Whether a fenced message was applied, and why not when it was not."""

    applied: bool
    reason: str = ""
    job_id: int | None = None
    new_state: JobState | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Replica:
    """A dispatcher process sharing the database (SPEC §9); dead once its lease passed."""

    id: str
    version: str
    started_at: datetime
    lease_until: datetime
