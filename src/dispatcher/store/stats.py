"""Named read-only queries for operators: counts by state, what each runner holds,
recent events. Nothing here writes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from dispatcher.domain.model import JobEvent, RunnerState
from dispatcher.domain.states import JobState
from dispatcher.store.events import to_event
from dispatcher.store.tables import executions, job_events, jobs, runner_sessions, runners


@dataclass(frozen=True)
class HeldExecution:
    """An unfinished execution and the runner holding it."""

    runner: str
    execution_id: int
    job_id: int
    started_at: datetime
    last_heartbeat_at: datetime | None


def job_counts_by_state(conn: Connection) -> dict[JobState, int]:
    """How many jobs are in each state; every state is present, zero or not."""
    rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state))
    counts = dict.fromkeys(JobState, 0)
    for state, count in rows:
        counts[JobState(state)] = int(count)
    return counts


def runner_counts_by_state(conn: Connection) -> dict[RunnerState, int]:
    rows = conn.execute(select(runners.c.state, func.count()).group_by(runners.c.state))
    counts = dict.fromkeys(RunnerState, 0)
    for state, count in rows:
        counts[RunnerState(state)] = int(count)
    return counts


def held_executions(conn: Connection) -> list[HeldExecution]:
    """Every unfinished execution bound to a runner, oldest first."""
    e = executions.c
    rows = conn.execute(
        select(e.runner_name, e.id, e.job_id, e.started_at, e.last_heartbeat_at)
        .where(e.finished_at.is_(None), e.runner_name != "")
        .order_by(e.id)
    )
    return [
        HeldExecution(r.runner_name, r.id, r.job_id, r.started_at, r.last_heartbeat_at)
        for r in rows
    ]


def last_heartbeats(conn: Connection) -> dict[str, datetime]:
    """Per runner, the newest heartbeat of any of its sessions."""
    s = runner_sessions.c
    rows = conn.execute(select(s.runner_name, func.max(s.last_seen_at)).group_by(s.runner_name))
    return {name: at for name, at in rows if at is not None}


def recent_events(conn: Connection, limit: int) -> list[JobEvent]:
    """The newest ``limit`` events of every job, newest first."""
    rows = conn.execute(select(job_events).order_by(job_events.c.id.desc()).limit(limit))
    return [to_event(r) for r in rows]


def latest_event_id(conn: Connection) -> int:
    """The id of the newest event (0 when there is none): it changes whenever a job does."""
    return int(conn.execute(select(func.coalesce(func.max(job_events.c.id), 0))).scalar_one())
