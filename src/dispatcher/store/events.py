"""Named queries over the job event log as one stream (Admin WatchJobs): events in id
order after a cursor. Event ids only grow, so an id is a cursor."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Row, func, select

from dispatcher.domain.model import JobEvent
from dispatcher.domain.states import JobState
from dispatcher.store.tables import job_events

_V = job_events.c


def events_after(conn: Connection, after_id: int, limit: int) -> list[JobEvent]:
    """Up to ``limit`` events with ids above ``after_id``, oldest first."""
    rows = conn.execute(select(job_events).where(_V.id > after_id).order_by(_V.id).limit(limit))
    return [_to_event(r) for r in rows]


def newest_event_id(conn: Connection) -> int:
    """The id of the newest event; 0 when there is none."""
    return int(conn.execute(select(func.coalesce(func.max(_V.id), 0))).scalar_one())


def _to_event(row: Row[Any]) -> JobEvent:
    return JobEvent(
        id=row.id,
        job_id=row.job_id,
        execution_id=row.execution_id,
        kind=row.kind,
        from_state=JobState(row.from_state) if row.from_state else None,
        to_state=JobState(row.to_state) if row.to_state else None,
        actor=row.actor,
        cause=row.cause,
        at=row.at,
    )
