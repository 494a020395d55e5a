"""The reads and writes of runner reports, a statement per batch: the fence read of
every execution a batch of reports names, and the accepts, finished executions and
finished jobs of the reports that speak for their jobs.

SQLite runs the per-row statements as one executemany in its own process; PostgreSQL
gets one statement over arrays (``unnest``), so a batch costs one round trip per kind of
write whatever its size.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, text, update

from dispatcher.domain.model import Job
from dispatcher.domain.states import JobState, Outcome
from dispatcher.store.jobs import job_columns, to_job
from dispatcher.store.sql import sqlite_execute_rows
from dispatcher.store.tables import (
    UtcDateTime,
    coalesce_holds,
    executions,
    flavors,
    jobs,
    runner_sessions,
    runners,
    schedules,
    sqlite_time,
)

_J = jobs.c
_E = executions.c


@dataclass(frozen=True)
class Reported:
    """What fencing needs about an execution a runner reports on, and its job."""

    job: Job
    session_id: int | None
    finished: bool
    # The reporting runner has losses to forgive (quarantine counters not at zero).
    runner_on_probation: bool = False


_REPORTED = executions.alias("reported")
_FENCE = (
    select(
        *job_columns(),
        _REPORTED.c.id.label("reported_id"),
        _REPORTED.c.session_id.label("reported_session_id"),
        _REPORTED.c.finished_at.label("reported_finished_at"),
        ((runners.c.lost_in_row > 0) | (runners.c.quarantines > 0)).label("on_probation"),
    )
    .select_from(
        _REPORTED.join(jobs, _J.id == _REPORTED.c.job_id)
        .outerjoin(runners, runners.c.name == _REPORTED.c.runner_name)
        .outerjoin(executions, _E.id == _J.current_execution_id)
        .outerjoin(flavors, flavors.c.id == _J.flavor_id)
        .outerjoin(schedules, schedules.c.id == _J.schedule_id)
    )
    .where(_REPORTED.c.id.in_(bindparam("execution_ids", expanding=True)))
    # One lock order for every writer that locks several jobs: no deadlocks between
    # batches of two replicas.
    .order_by(_J.id)
)
_FENCE_FOR_UPDATE = _FENCE.with_for_update(of=jobs)


def reported(conn: Connection, execution_ids: Collection[int]) -> dict[int, Reported]:
    """The executions runners report on and their jobs (locked on PostgreSQL), in one
    read: the fence of every report. Unknown ids are missing from the answer."""
    if not execution_ids:
        return {}
    statement = _FENCE_FOR_UPDATE if conn.dialect.name == "postgresql" else _FENCE
    rows: Any = conn.execute(statement, {"execution_ids": list(execution_ids)})
    return {
        row.reported_id: Reported(
            to_job(row),
            row.reported_session_id,
            row.reported_finished_at is not None,
            bool(row.on_probation),
        )
        for row in rows
    }


@dataclass(frozen=True)
class Fence:
    """What deciding a batch of reports needs about each execution, and no more: most
    reports speak for their jobs and only end them."""

    job_id: int
    state: JobState
    current_execution_id: int | None
    session_id: int | None
    finished: bool
    accepted: bool
    # Another row learns how the job ended: a dedupe key or a schedule waits on it,
    # or the runner has losses to forgive.
    others_wait: bool
    holds_keys: bool


_FENCES = (
    select(
        _REPORTED.c.id,
        _REPORTED.c.session_id,
        _REPORTED.c.finished_at,
        _REPORTED.c.accepted_at,
        _J.id.label("job_id"),
        _J.state,
        _J.current_execution_id,
        # Whether the list is empty, read by the database: parsing every job's keys as
        # JSON to learn only that cost more than the rest of the row.
        (func.json_array_length(_J.coalesce_keys) > 0).label("holds_keys"),
        (
            _J.dedupe_key.is_not(None)
            | _J.schedule_id.is_not(None)
            | (runners.c.lost_in_row > 0)
            | (runners.c.quarantines > 0)
        ).label("others_wait"),
    )
    .select_from(
        _REPORTED.join(jobs, _J.id == _REPORTED.c.job_id).outerjoin(
            runners, runners.c.name == _REPORTED.c.runner_name
        )
    )
    .where(_REPORTED.c.id.in_(bindparam("execution_ids", expanding=True)))
    .order_by(_J.id)
)
_FENCES_FOR_UPDATE = _FENCES.with_for_update(of=jobs)


def fences(conn: Connection, execution_ids: Collection[int]) -> dict[int, Fence]:
    """The fence of each execution a batch of reports names (jobs locked on
    PostgreSQL), in one read. Unknown ids are missing from the answer."""
    if not execution_ids:
        return {}
    statement = _FENCES_FOR_UPDATE if conn.dialect.name == "postgresql" else _FENCES
    rows = conn.execute(statement, {"execution_ids": list(execution_ids)})
    # By position, in the order of _FENCES: a Row read by column name cost more than
    # the rest of deciding the report.
    return {
        execution_id: Fence(
            job_id=job_id,
            state=_JOB_STATES[state],
            current_execution_id=current_execution_id,
            session_id=session_id,
            finished=finished_at is not None,
            accepted=accepted_at is not None,
            others_wait=bool(others_wait),
            holds_keys=bool(holds_keys),
        )
        for (
            execution_id,
            session_id,
            finished_at,
            accepted_at,
            job_id,
            state,
            current_execution_id,
            holds_keys,
            others_wait,
        ) in rows
    }


_JOB_STATES = {state.value: state for state in JobState}


_ACCEPT = (
    update(executions)
    .where(
        _E.id.in_(bindparam("execution_ids", expanding=True)),
        _E.finished_at.is_(None),
        _E.accepted_at.is_(None),
    )
    .values(accepted_at=bindparam("now", type_=UtcDateTime()))
)


def accept_executions(conn: Connection, execution_ids: Sequence[int], now: datetime) -> int:
    """Mark open, unaccepted executions accepted; how many were."""
    if not execution_ids:
        return 0
    return int(conn.execute(_ACCEPT, {"execution_ids": list(execution_ids), "now": now}).rowcount)


@dataclass(frozen=True)
class Finished:
    """An execution a runner reported the end of, and the state its job moves to."""

    execution_id: int
    job_id: int
    outcome: Outcome
    state: JobState
    info: str
    logtail: str | None
    result: bytes
    # The job holds coalesce keys, freed as it stops building.
    holds_keys: bool = False


_SQLITE_FINISH_EXECUTION = (
    "UPDATE executions SET outcome = ?, finished_at = ?, info = ?, "
    "logtail = COALESCE(?, logtail), result = ? WHERE id = ? AND finished_at IS NULL"
)
_SQLITE_FINISH_JOB = (
    "UPDATE jobs SET state = ?, info = ?, updated_at = ?, finished_at = ? "
    "WHERE id = ? AND state = 'BUILDING' AND current_execution_id = ?"
)
_PG_FINISH_EXECUTIONS = text(
    """
    UPDATE executions AS e
    SET outcome = v.outcome, finished_at = :now, info = v.info,
        logtail = COALESCE(v.logtail, e.logtail), result = v.result
    FROM unnest(CAST(:ids AS BIGINT[]), CAST(:outcomes AS VARCHAR[]), CAST(:infos AS TEXT[]),
                CAST(:logtails AS TEXT[]), CAST(:results AS BYTEA[]))
         AS v(id, outcome, info, logtail, result)
    WHERE e.id = v.id AND e.finished_at IS NULL
    """
).bindparams(bindparam("now", type_=UtcDateTime()))
_PG_FINISH_JOBS = text(
    """
    UPDATE jobs AS j
    SET state = v.state, info = v.info, updated_at = :now, finished_at = :now
    FROM unnest(CAST(:ids AS BIGINT[]), CAST(:execution_ids AS BIGINT[]),
                CAST(:states AS VARCHAR[]), CAST(:infos AS TEXT[]))
         AS v(id, execution_id, state, info)
    WHERE j.id = v.id AND j.state = 'BUILDING' AND j.current_execution_id = v.execution_id
    """
).bindparams(bindparam("now", type_=UtcDateTime()))


def finish(conn: Connection, done: Sequence[Finished], now: datetime) -> int:
    """End executions and move their jobs from BUILDING to the terminal state each
    names, as compare-and-sets on the execution being open and current. The caller
    holds the jobs' rows (the fence read), so each applies; returns how many jobs moved.
    Jobs that held coalesce keys release them."""
    if not done:
        return 0
    if conn.dialect.name == "postgresql":
        conn.execute(
            _PG_FINISH_EXECUTIONS,
            {
                "now": now,
                "ids": [d.execution_id for d in done],
                "outcomes": [d.outcome.value for d in done],
                "infos": [d.info for d in done],
                "logtails": [d.logtail for d in done],
                "results": [d.result for d in done],
            },
        )
        moved = conn.execute(
            _PG_FINISH_JOBS,
            {
                "now": now,
                "ids": [d.job_id for d in done],
                "execution_ids": [d.execution_id for d in done],
                "states": [d.state.value for d in done],
                "infos": [d.info for d in done],
            },
        ).rowcount
    else:
        at = sqlite_time(now)
        sqlite_execute_rows(
            conn,
            _SQLITE_FINISH_EXECUTION,
            [(d.outcome.value, at, d.info, d.logtail, d.result, d.execution_id) for d in done],
        )
        moved = sqlite_execute_rows(
            conn,
            _SQLITE_FINISH_JOB,
            [(d.state.value, d.info, at, at, d.job_id, d.execution_id) for d in done],
        )
    holders = [d.job_id for d in done if d.holds_keys]
    if holders:
        conn.execute(delete(coalesce_holds).where(coalesce_holds.c.job_id.in_(holders)))
    return int(moved)


_TOUCH_SESSIONS = (
    update(runner_sessions)
    .where(
        runner_sessions.c.id.in_(bindparam("session_ids", expanding=True)),
        runner_sessions.c.closed_at.is_(None),
    )
    .values(last_seen_at=bindparam("now", type_=UtcDateTime()))
)


def touch_sessions(conn: Connection, session_ids: Collection[int], now: datetime) -> None:
    """Heartbeats: the sessions were heard from at ``now``."""
    if session_ids:
        conn.execute(_TOUCH_SESSIONS, {"session_ids": sorted(session_ids), "now": now})
