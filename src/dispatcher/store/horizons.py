"""Named queries that say when the next time-driven work falls, for the loops that sleep
until then instead of looking every second: the due loop (jobs due, expiring, or
waiting out a back-off) and the deadline sweep (re-attach graces, idle silence,
quarantines). Each is one statement of scalar subqueries, each read off an index."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, exists, func, select

from dispatcher.domain.states import JobState
from dispatcher.store.tables import backoffs, executions, jobs, replicas, runner_sessions, runners

_J = jobs.c
_S = runner_sessions.c
_E = executions.c
_R = runners.c

_WAITING = (JobState.NOTICED.value, JobState.QUEUED.value)


def next_due_at(conn: Connection, now: datetime) -> datetime | None:
    """The first moment after ``now`` at which a waiting job may become due by time
    alone: a NOTICED job's not_before, a waiting job's expiry (max_wait), the end of a
    back-off. None when no such moment is known."""
    due = select(func.min(_J.not_before)).where(
        _J.state == JobState.NOTICED.value, _J.not_before > now
    )
    expiry = select(func.min(_J.expires_at)).where(
        _J.state.in_(_WAITING), _J.expires_at.is_not(None), _J.expires_at > now
    )
    backoff_end = select(func.min(backoffs.c.until)).where(backoffs.c.until > now)
    row = conn.execute(
        select(due.scalar_subquery(), expiry.scalar_subquery(), backoff_end.scalar_subquery())
    ).one()
    return min((t for t in row if t is not None), default=None)


@dataclass(frozen=True)
class SweepHorizon:
    """What the deadline sweep of one replica may have to do next."""

    # A job is BUILDING, an execution is open, or another replica is alive or holds
    # open sessions: deadlines (accept, heartbeat, max_run, cancel grace, leases) may
    # fall at any moment.
    in_flight: bool
    # The earliest detach among detached sessions (its re-attach grace runs from it).
    first_detached: datetime | None
    # The earliest last heartbeat among this replica's attached sessions.
    oldest_heard: datetime | None
    # The first end of a runner's quarantine after ``now``.
    quarantine_end: datetime | None


def sweep_horizon(conn: Connection, replica_id: str, now: datetime) -> SweepHorizon:
    building = exists().where(_J.state == JobState.BUILDING.value)
    open_execution = exists().where(_E.session_id.is_not(None), _E.finished_at.is_(None))
    other_replica = exists().where(replicas.c.id != replica_id, replicas.c.lease_until > now)
    # Two subqueries: SQLite reads a lone min() or max() off an index, not both at once.
    holders = select(_S.replica_id).where(_S.closed_at.is_(None))
    lowest = holders.with_only_columns(func.min(_S.replica_id)).scalar_subquery()
    highest = holders.with_only_columns(func.max(_S.replica_id)).scalar_subquery()
    first_detached = select(func.min(_S.detached_at)).where(
        _S.closed_at.is_(None), _S.detached_at.is_not(None)
    )
    oldest_heard = select(func.min(_S.last_seen_at)).where(
        _S.replica_id == replica_id, _S.closed_at.is_(None), _S.detached_at.is_(None)
    )
    quarantine_end = select(func.min(_R.quarantined_until)).where(
        _R.quarantined_until.is_not(None), _R.quarantined_until > now
    )
    row = conn.execute(
        select(
            building,
            open_execution,
            other_replica,
            lowest,
            highest,
            first_detached.scalar_subquery(),
            oldest_heard.scalar_subquery(),
            quarantine_end.scalar_subquery(),
        )
    ).one()
    building_now, executing, others_alive, low, high, detached, heard, quarantined = row
    others_hold = low is not None and not (low == high == replica_id)
    return SweepHorizon(
        in_flight=bool(building_now or executing or others_alive or others_hold),
        first_detached=detached,
        oldest_heard=heard,
        quarantine_end=quarantined,
    )
