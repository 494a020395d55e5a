"""Executions: one try of a job on a runner or a distributor (SPEC §4), with its
config snapshot, heartbeats, log tail, commit point and outcome."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, insert, select, update

from dispatcher.domain.model import Execution
from dispatcher.domain.states import Outcome
from dispatcher.store.sql import sqlite_insert_rows
from dispatcher.store.tables import executions, sqlite_time

_E = executions.c


def insert_execution(
    conn: Connection,
    job_id: int,
    number: int,
    runner: str,
    session_id: int | None,
    now: datetime,
    deadline_at: datetime | None = None,
) -> int:
    [execution_id] = insert_executions(
        conn, [(job_id, number, runner, session_id, deadline_at)], now
    )
    return execution_id


_INSERT_EXECUTIONS = insert(executions).returning(_E.id, sort_by_parameter_order=True)


_COLUMNS = ("job_id", "number", "runner_name", "session_id", "started_at", "result", "deadline_at")


def insert_executions(
    conn: Connection,
    rows: Sequence[tuple[int, int, str, int | None, datetime | None]],
    now: datetime,
) -> list[int]:
    """New executions (job id, number, runner, session id, deadline); their ids in order."""
    if conn.dialect.name == "sqlite":
        at = sqlite_time(now)
        plain = [
            (job_id, number, runner, session_id, at, b"", sqlite_time(deadline))
            for job_id, number, runner, session_id, deadline in rows
        ]
        return sqlite_insert_rows(conn, executions, _COLUMNS, plain)
    values = [
        {
            "job_id": job_id,
            "number": number,
            "runner_name": runner,
            "session_id": session_id,
            "started_at": now,
            "result": b"",
            "deadline_at": deadline,
        }
        for job_id, number, runner, session_id, deadline in rows
    ]
    return list(conn.execute(_INSERT_EXECUTIONS, values).scalars())


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
        distributor=m["distributor"],
        info_url=m["info_url"],
    )
