"""Named queries about (subject, process) back-offs (SPEC §3, §5.6)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, delete, select, update

from dispatcher.domain.model import Backoff
from dispatcher.store.sql import insert_ignoring_conflicts
from dispatcher.store.tables import backoffs

_B = backoffs.c


def upsert_backoff(
    conn: Connection,
    subject: str,
    process: str,
    until: datetime,
    cause: str,
    job_id: int | None,
    now: datetime,
) -> datetime:
    """Keep (subject, process) backed off until at least ``until``; one row per pair.
    Returns the deadline in force."""
    values = {"until": until, "cause": cause, "job_id": job_id, "created_at": now}
    conn.execute(
        insert_ignoring_conflicts(conn, backoffs),
        {"subject": subject, "process": process, **values},
    )
    conn.execute(
        update(backoffs)
        .where(_B.subject == subject, _B.process == process, _B.until < until)
        .values(values)
    )
    in_force: datetime = conn.execute(
        select(_B.until).where(_B.subject == subject, _B.process == process)
    ).scalar_one()
    return in_force


def active_backoff(conn: Connection, subject: str, process: str, now: datetime) -> Backoff | None:
    row = conn.execute(
        select(backoffs).where(_B.subject == subject, _B.process == process, _B.until > now)
    ).first()
    if row is None:
        return None
    return Backoff(row.subject, row.process, row.until, row.cause, row.job_id)


def list_backoffs(conn: Connection, now: datetime) -> list[Backoff]:
    rows = conn.execute(select(backoffs).where(_B.until > now).order_by(_B.until))
    return [Backoff(r.subject, r.process, r.until, r.cause, r.job_id) for r in rows]


def clear_backoff(conn: Connection, subject: str, process: str) -> bool:
    res = conn.execute(delete(backoffs).where(_B.subject == subject, _B.process == process))
    return res.rowcount == 1
