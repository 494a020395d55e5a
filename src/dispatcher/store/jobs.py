"""Named queries about jobs, their executions and their events."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, and_, exists, func, insert, select, update

from dispatcher.domain.model import Execution, Job, JobEvent, JobFilter, JobSpec
from dispatcher.domain.states import JobState, OnLostPolicy, Outcome, Transition
from dispatcher.store.tables import executions, job_events, job_labels, jobs

_J = jobs.c
_E = executions.c


def _spec_values(spec: JobSpec) -> dict[str, Any]:
    return {
        "queue": spec.queue,
        "platform": spec.platform,
        "labels": sorted(spec.labels),
        "command": list(spec.command),
        "payload": spec.payload,
        "priority": spec.priority,
        "coalesce_keys": sorted(spec.coalesce_keys),
        "dedupe_key": spec.dedupe_key or None,
        "idempotency_key": spec.idempotency_key or None,
        "origin_time": spec.origin_time,
        "distributor": spec.distributor,
        "on_lost": spec.on_lost.value,
    }


def insert_jobs(
    conn: Connection, specs: Sequence[tuple[JobSpec, JobState]], now: datetime
) -> list[int]:
    """Insert jobs in the given states and return their ids, in order."""
    ids: list[int] = []
    for spec, state in specs:
        values = _spec_values(spec)
        values.update(
            not_before=spec.not_before or now,
            state=state.value,
            created_at=now,
            updated_at=now,
            finished_at=now if state.terminal else None,
        )
        ids.append(conn.execute(insert(jobs).returning(_J.id), values).scalar_one())
    rows = [
        {"job_id": i, "label": label}
        for i, (spec, _) in zip(ids, specs, strict=True)
        for label in sorted(spec.labels)
    ]
    if rows:
        conn.execute(insert(job_labels), rows)
    return ids


def job_id_by_idempotency_key(conn: Connection, key: str) -> int | None:
    return conn.execute(select(_J.id).where(_J.idempotency_key == key)).scalar_one_or_none()


def _job_columns() -> list[Any]:
    return [*jobs.c, executions.c.runner_name]


def _job_query() -> Any:
    return select(*_job_columns()).select_from(
        jobs.outerjoin(executions, _E.id == _J.current_execution_id)
    )


def _to_job(row: Row[Any]) -> Job:
    m = row._mapping
    spec = JobSpec(
        platform=m["platform"],
        command=tuple(m["command"]),
        queue=m["queue"],
        labels=frozenset(m["labels"]),
        payload=bytes(m["payload"]),
        priority=m["priority"],
        not_before=m["not_before"],
        coalesce_keys=frozenset(m["coalesce_keys"]),
        dedupe_key=m["dedupe_key"] or "",
        idempotency_key=m["idempotency_key"] or "",
        origin_time=m["origin_time"],
        distributor=m["distributor"],
        on_lost=OnLostPolicy(m["on_lost"]),
    )
    return Job(
        id=m["id"],
        spec=spec,
        state=JobState(m["state"]),
        info=m["info"],
        attempt=m["attempt"],
        current_execution_id=m["current_execution_id"],
        duplicate_of=m["duplicate_of"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        finished_at=m["finished_at"],
        runner=(m["runner_name"] or "") if m["state"] == JobState.BUILDING else "",
        cancel_requested=m["cancel_requested_at"] is not None,
    )


def get_job(conn: Connection, job_id: int, *, for_update: bool = False) -> Job | None:
    query = _job_query().where(_J.id == job_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update(of=jobs)
    row = conn.execute(query).first()
    return _to_job(row) if row else None


def get_jobs(conn: Connection, job_ids: Iterable[int]) -> dict[int, Job]:
    rows = conn.execute(_job_query().where(_J.id.in_(list(job_ids)))).all()
    return {job.id: job for job in map(_to_job, rows)}


def list_jobs(conn: Connection, flt: JobFilter, *, before_id: int | None, limit: int) -> list[Job]:
    """Jobs newest first (by id), matching ``flt``, with ids below ``before_id``."""
    query = _job_query()
    conds: list[Any] = []
    if flt.states:
        conds.append(_J.state.in_(sorted(s.value for s in flt.states)))
    if flt.queue:
        conds.append(_J.queue == flt.queue)
    if flt.platform:
        conds.append(_J.platform == flt.platform)
    for label in sorted(flt.labels):
        conds.append(exists().where(job_labels.c.job_id == _J.id, job_labels.c.label == label))
    if flt.runner:
        conds.append(_J.state == JobState.BUILDING.value)
        conds.append(_E.runner_name == flt.runner)
    if flt.created_after:
        conds.append(_J.created_at >= flt.created_after)
    if flt.created_before:
        conds.append(_J.created_at < flt.created_before)
    if before_id is not None:
        conds.append(_J.id < before_id)
    rows = conn.execute(query.where(and_(True, *conds)).order_by(_J.id.desc()).limit(limit))
    return [_to_job(r) for r in rows]


def claimable_jobs(
    conn: Connection, platform: str, labels: frozenset[str], limit: int, now: datetime
) -> list[Job]:
    """The next ``limit`` QUEUED jobs a runner with ``platform``/``labels`` may take, in
    claim order (SPEC §5.2), locked for this transaction. On PostgreSQL rows locked by
    another replica's claim are skipped, not waited for."""
    foreign_label = exists().where(
        job_labels.c.job_id == _J.id, job_labels.c.label.not_in(sorted(labels))
    )
    query = (
        select(_J.id)
        .where(
            _J.state == JobState.QUEUED.value,
            _J.platform == platform,
            _J.not_before <= now,
            ~foreign_label,
        )
        .order_by(_J.priority.desc(), _J.not_before, _J.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=jobs)
    ids = list(conn.execute(query).scalars())
    if not ids:
        return []
    found = get_jobs(conn, ids)
    return [found[i] for i in ids]


def due_noticed_job_ids(conn: Connection, now: datetime, limit: int) -> list[int]:
    query = (
        select(_J.id)
        .where(_J.state == JobState.NOTICED.value, _J.not_before <= now)
        .order_by(_J.not_before, _J.id)
        .limit(limit)
    )
    return list(conn.execute(query).scalars())


def next_due_time(conn: Connection) -> datetime | None:
    value: datetime | None = conn.execute(
        select(func.min(_J.not_before)).where(_J.state == JobState.NOTICED.value)
    ).scalar_one_or_none()
    return value


def move(
    conn: Connection,
    job_id: int,
    transition: Transition,
    now: datetime,
    *,
    info: str | None = None,
    expected_execution_id: int | None = None,
    new_execution_id: int | None = None,
) -> bool:
    """Apply ``transition`` to one job as a compare-and-set on its state (and, for moves
    that end an execution, on its current execution id). Returns whether it applied."""
    conds = [_J.id == job_id, _J.state.in_(sorted(s.value for s in transition.sources))]
    if transition.ends_execution:
        conds.append(_J.current_execution_id == expected_execution_id)
    values: dict[str, Any] = {"state": transition.target.value, "updated_at": now}
    if info is not None:
        values["info"] = info
    if transition.target.terminal:
        values["finished_at"] = now
    if new_execution_id is not None:
        values["current_execution_id"] = new_execution_id
        values["attempt"] = _J.attempt + 1
    elif transition.ends_execution and not transition.target.terminal:
        # Back to waiting: the old execution no longer speaks for the job.
        values["current_execution_id"] = None
        values["cancel_requested_at"] = None
    result = conn.execute(update(jobs).where(*conds).values(values))
    return result.rowcount == 1


def mark_cancel_requested(conn: Connection, job_id: int, execution_id: int, now: datetime) -> bool:
    result = conn.execute(
        update(jobs)
        .where(
            _J.id == job_id,
            _J.state == JobState.BUILDING.value,
            _J.current_execution_id == execution_id,
            _J.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=now, updated_at=now)
    )
    return result.rowcount == 1


# --- executions -------------------------------------------------------------------


def insert_execution(
    conn: Connection,
    job_id: int,
    number: int,
    runner: str,
    session_id: int | None,
    now: datetime,
) -> int:
    stmt = insert(executions).returning(_E.id)
    return int(
        conn.execute(
            stmt,
            {
                "job_id": job_id,
                "number": number,
                "runner_name": runner,
                "session_id": session_id,
                "started_at": now,
                "result": b"",
            },
        ).scalar_one()
    )


def get_execution(conn: Connection, execution_id: int) -> Execution | None:
    row = conn.execute(select(executions).where(_E.id == execution_id)).first()
    return _to_execution(row) if row else None


def executions_of(conn: Connection, job_id: int) -> list[Execution]:
    rows = conn.execute(select(executions).where(_E.job_id == job_id).order_by(_E.number))
    return [_to_execution(r) for r in rows]


def move_open_executions(conn: Connection, from_session: int, to_session: int) -> list[int]:
    """Re-attach: the unfinished executions of one session now belong to another."""
    ids = [e for e, _ in open_executions_of_session(conn, from_session)]
    if ids:
        conn.execute(
            update(executions)
            .where(_E.id.in_(ids), _E.finished_at.is_(None))
            .values(session_id=to_session)
        )
    return ids


def unaccepted_executions(conn: Connection, cutoff: datetime) -> list[tuple[int, int, int]]:
    """(execution id, job id, session id) of open executions assigned before ``cutoff``
    that their runner never accepted."""
    rows = conn.execute(
        select(_E.id, _E.job_id, _E.session_id).where(
            _E.finished_at.is_(None),
            _E.accepted_at.is_(None),
            _E.session_id.is_not(None),
            _E.started_at < cutoff,
        )
    )
    return [(r.id, r.job_id, r.session_id) for r in rows]


def overdue_cancels(conn: Connection, cutoff: datetime) -> list[tuple[int, int]]:
    """(job id, execution id) of BUILDING jobs whose cancel was asked before ``cutoff``."""
    rows = conn.execute(
        select(_J.id, _J.current_execution_id).where(
            _J.state == JobState.BUILDING.value, _J.cancel_requested_at < cutoff
        )
    )
    return [(r.id, r.current_execution_id) for r in rows]


def open_executions_of_session(conn: Connection, session_id: int) -> list[tuple[int, int]]:
    """(execution id, job id) of every unfinished execution bound to a session."""
    rows = conn.execute(
        select(_E.id, _E.job_id).where(_E.session_id == session_id, _E.finished_at.is_(None))
    )
    return [(r.id, r.job_id) for r in rows]


def finish_execution(
    conn: Connection,
    execution_id: int,
    outcome: Outcome,
    now: datetime,
    *,
    info: str = "",
    logtail: str | None = None,
    result: bytes = b"",
) -> bool:
    values: dict[str, Any] = {
        "outcome": outcome.value,
        "finished_at": now,
        "info": info,
        "result": result,
    }
    if logtail is not None:
        values["logtail"] = logtail
    res = conn.execute(
        update(executions).where(_E.id == execution_id, _E.finished_at.is_(None)).values(values)
    )
    return res.rowcount == 1


def touch_executions(
    conn: Connection,
    session_id: int,
    updates: Sequence[tuple[int, str | None, int | None]],
    now: datetime,
) -> None:
    """Record heartbeats of one session: (execution id, logtail or None, progress or None).
    Executions that are finished or bound to another session are left alone."""
    for execution_id, logtail, progress in updates:
        values: dict[str, Any] = {"last_heartbeat_at": now}
        if logtail is not None:
            values["logtail"] = logtail
        if progress is not None:
            values["progress_percent"] = progress
        conn.execute(
            update(executions)
            .where(_E.id == execution_id, _E.session_id == session_id, _E.finished_at.is_(None))
            .values(values)
        )


def mark_execution(conn: Connection, execution_id: int, column: str, now: datetime) -> bool:
    """Set ``accepted_at`` or ``committed_at`` once on an open execution."""
    col = _E[column]
    res = conn.execute(
        update(executions)
        .where(_E.id == execution_id, _E.finished_at.is_(None), col.is_(None))
        .values({column: now})
    )
    return res.rowcount == 1


def _to_execution(row: Row[Any]) -> Execution:
    m = row._mapping
    return Execution(
        id=m["id"],
        job_id=m["job_id"],
        number=m["number"],
        runner=m["runner_name"],
        session_id=m["session_id"],
        started_at=m["started_at"],
        last_heartbeat_at=m["last_heartbeat_at"],
        committed_at=m["committed_at"],
        finished_at=m["finished_at"],
        outcome=Outcome(m["outcome"]) if m["outcome"] else None,
        info=m["info"],
        logtail=m["logtail"],
        result=bytes(m["result"]),
    )


# --- events -----------------------------------------------------------------------


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append audit events. Each row: job_id, execution_id, kind, from_state, to_state,
    actor, cause, at."""
    if rows:
        conn.execute(insert(job_events), list(rows))


def events_of(conn: Connection, job_id: int) -> list[JobEvent]:
    rows = conn.execute(
        select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
    )
    return [
        JobEvent(
            id=r.id,
            job_id=r.job_id,
            execution_id=r.execution_id,
            kind=r.kind,
            from_state=JobState(r.from_state) if r.from_state else None,
            to_state=JobState(r.to_state) if r.to_state else None,
            actor=r.actor,
            cause=r.cause,
            at=r.at,
        )
        for r in rows
    ]
