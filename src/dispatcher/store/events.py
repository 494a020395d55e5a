"""The job event log (SPEC §4, audit history): appending events, in one statement per
group commit, and reading them back, per job or as one stream in id order after a
cursor (Admin WatchJobs; event ids only grow, so an id is a cursor)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select

from dispatcher.domain.model import JobEvent
from dispatcher.domain.states import JobState
from dispatcher.store.sql import sqlite_execute_rows, sqlite_insert_sql
from dispatcher.store.tables import job_events, sqlite_time

_V = job_events.c


def events_after(conn: Connection, after_id: int, limit: int) -> list[JobEvent]:
    """Up to ``limit`` events with ids above ``after_id``, oldest first."""
    rows = conn.execute(select(job_events).where(_V.id > after_id).order_by(_V.id).limit(limit))
    return [to_event(r) for r in rows]


def newest_event_id(conn: Connection) -> int:
    """The id of the newest event; 0 when there is none."""
    return int(conn.execute(select(func.coalesce(func.max(_V.id), 0))).scalar_one())


_INSERT_EVENTS = insert(job_events)
_EVENT_BUFFER = "dispatcher.event_buffer"


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Append audit events. Each row: job_id, execution_id, kind, from_state, to_state,
    actor, cause, at. Inside :func:`buffered_events` they are written at its end, in
    one statement, still in the same transaction."""
    if not rows:
        return
    buffer = conn.info.get(_EVENT_BUFFER)
    if buffer is not None:
        buffer.extend(rows)
    else:
        _insert(conn, rows)


_COLUMNS = ("job_id", "execution_id", "kind", "from_state", "to_state", "actor", "cause", "at")


def _insert(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    if conn.dialect.name != "sqlite":
        conn.execute(_INSERT_EVENTS, list(rows))
        return
    plain = [
        (
            r["job_id"],
            r.get("execution_id"),
            r["kind"],
            r.get("from_state"),
            r.get("to_state"),
            r["actor"],
            r.get("cause", ""),
            sqlite_time(r["at"]),
        )
        for r in rows
    ]
    sqlite_execute_rows(conn, sqlite_insert_sql("job_events", _COLUMNS), plain)


def buffering(conn: Connection) -> bool:
    """Whether events written now wait for the end of a :func:`buffered_events` block."""
    return _EVENT_BUFFER in conn.info


@contextmanager
def buffered_events(conn: Connection) -> Iterator[None]:
    """Collect the events written in the block and insert them in one statement when it
    ends (group commits: many small moves, one INSERT). Nothing in the block may read
    events back."""
    conn.info[_EVENT_BUFFER] = []
    try:
        yield
        rows = conn.info[_EVENT_BUFFER]
    finally:
        del conn.info[_EVENT_BUFFER]
    if rows:
        _insert(conn, rows)


def to_event(r: Row[Any]) -> JobEvent:
    return JobEvent(
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


def events_of(conn: Connection, job_id: int) -> list[JobEvent]:
    rows = conn.execute(
        select(job_events).where(job_events.c.job_id == job_id).order_by(job_events.c.id)
    )
    return [to_event(r) for r in rows]
