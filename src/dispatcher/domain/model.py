"""The things dispatcher keeps (SPEC §3), as plain values."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime

from dispatcher.domain.states import DEFAULT_ON_LOST, JobState, OnLostPolicy, Outcome


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
