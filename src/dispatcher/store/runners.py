"""Named queries about runners, their sessions and the replicas that hold them."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from dispatcher.domain.model import Runner, RunnerHello, RunnerState
from dispatcher.store.tables import (
    UtcDateTime,
    executions,
    jobs,
    replicas,
    runner_sessions,
    runners,
)

_R = runners.c
_S = runner_sessions.c
_E = executions.c


def upsert_runner(conn: Connection, hello: RunnerHello, state: RunnerState, now: datetime) -> None:
    values: dict[str, Any] = {
        "platform": hello.platform,
        "labels": sorted(hello.labels),
        "capacity": hello.capacity,
        "state": state.value,
        "version": hello.version,
        "last_seen_at": now,
    }
    updated = conn.execute(update(runners).where(_R.name == hello.name).values(values))
    if updated.rowcount == 0:
        conn.execute(insert(runners).values(name=hello.name, **values))


def runner_state(conn: Connection, name: str) -> RunnerState | None:
    value = conn.execute(select(_R.state).where(_R.name == name)).scalar_one_or_none()
    return RunnerState(value) if value else None


def set_runner_state(conn: Connection, name: str, state: RunnerState, now: datetime) -> bool:
    res = conn.execute(
        update(runners).where(_R.name == name).values(state=state.value, last_seen_at=now)
    )
    return res.rowcount == 1


def list_runners(conn: Connection, name: str | None = None) -> list[Runner]:
    """Every runner (or the one called ``name``), online and draining ones first."""
    building = (
        select(executions.c.runner_name, func.count().label("n"))
        .where(executions.c.finished_at.is_(None))
        .group_by(executions.c.runner_name)
        .subquery()
    )
    query = select(runners, func.coalesce(building.c.n, 0).label("building")).select_from(
        runners.outerjoin(building, building.c.runner_name == _R.name)
    )
    if name is not None:
        query = query.where(_R.name == name)
    rows = conn.execute(query)
    result = [
        Runner(
            name=r.name,
            platform=r.platform,
            labels=frozenset(r.labels),
            capacity=r.capacity,
            state=RunnerState(r.state),
            version=r.version,
            last_seen_at=r.last_seen_at,
            building=r.building,
            quarantined_until=r.quarantined_until,
        )
        for r in rows
    ]
    # Online and draining runners first, then offline ones; by name within each.
    return sorted(result, key=lambda r: (r.state is RunnerState.OFFLINE, r.name))


def quarantines_ended_between(conn: Connection, start: datetime, end: datetime) -> bool:
    query = select(_R.name).where(_R.quarantined_until > start, _R.quarantined_until <= end)
    return conn.execute(query.limit(1)).first() is not None


def count_lost_execution(conn: Connection, name: str) -> tuple[int, int]:
    """One more execution of ``name`` lost in a row. Returns (lost in a row, quarantines
    so far)."""
    conn.execute(update(runners).where(_R.name == name).values(lost_in_row=_R.lost_in_row + 1))
    row = conn.execute(select(_R.lost_in_row, _R.quarantines).where(_R.name == name)).first()
    return (row.lost_in_row, row.quarantines) if row else (0, 0)


def quarantine(conn: Connection, name: str, until: datetime) -> None:
    conn.execute(
        update(runners)
        .where(_R.name == name)
        .values(quarantined_until=until, quarantines=_R.quarantines + 1, lost_in_row=0)
    )


def count_good_report(conn: Connection, name: str) -> None:
    """The runner ran a job to a result: it works, whatever the job's verdict."""
    conn.execute(
        update(runners)
        .where(_R.name == name, (_R.lost_in_row > 0) | (_R.quarantines > 0))
        .values(lost_in_row=0, quarantines=0)
    )


def open_session(
    conn: Connection, runner: str, replica_id: str, resume_token_hash: str, now: datetime
) -> int:
    return int(
        conn.execute(
            insert(runner_sessions).returning(_S.id),
            {
                "runner_name": runner,
                "replica_id": replica_id,
                "resume_token_hash": resume_token_hash,
                "opened_at": now,
                "last_seen_at": now,
            },
        ).scalar_one()
    )


_CLAIMING_FOR = (
    select(_S.id)
    .select_from(runner_sessions.join(runners, _R.name == _S.runner_name))
    .where(
        _S.id.in_(bindparam("session_ids", expanding=True)),
        _S.closed_at.is_(None),
        or_(_R.quarantined_until.is_(None), _R.quarantined_until <= bindparam("now")),
    )
    .order_by(_S.id)
)
# The same sessions on PostgreSQL, with their runners' names, held FOR KEY SHARE in id
# order; also the first step of the statement that inserts a job bound to one of them
# (store/jobs.py). ``:session_ids`` is an array of ids.
PG_SESSIONS_TO_CLAIM_FOR = """
    SELECT runner_sessions.id, runner_sessions.runner_name
    FROM runner_sessions JOIN runners ON runners.name = runner_sessions.runner_name
    WHERE runner_sessions.id = ANY(CAST(:session_ids AS BIGINT[]))
      AND runner_sessions.closed_at IS NULL
      AND (runners.quarantined_until IS NULL OR runners.quarantined_until <= :now)
    ORDER BY runner_sessions.id
    FOR KEY SHARE OF runner_sessions
"""
_CLAIMING_FOR_LOCKED = text(PG_SESSIONS_TO_CLAIM_FOR).bindparams(
    bindparam("now", type_=UtcDateTime())
)


def lock_sessions_to_claim_for(conn: Connection, session_ids: list[int], now: datetime) -> set[int]:
    """Which of these sessions may get work now: still open, their runner not in
    quarantine. The sessions are held until the transaction ends, so that a concurrent
    close waits for this transaction (and then sees what it bound).

    PostgreSQL: FOR KEY SHARE, in id order. Heartbeats (plain UPDATEs of the row) pass
    it; ``close_session`` takes FOR UPDATE, which waits for it."""
    query = _CLAIMING_FOR_LOCKED if conn.dialect.name == "postgresql" else _CLAIMING_FOR
    return set(conn.execute(query, {"session_ids": sorted(session_ids), "now": now}).scalars())


def resumable_session(conn: Connection, runner: str, resume_token_hash: str) -> int | None:
    """The unclosed session of ``runner`` that ``resume_token_hash`` belongs to, if any."""
    value: int | None = conn.execute(
        select(_S.id).where(
            _S.runner_name == runner,
            _S.resume_token_hash == resume_token_hash,
            _S.closed_at.is_(None),
        )
    ).scalar_one_or_none()
    return value


def detach_session(conn: Connection, session_id: int, now: datetime) -> bool:
    res = conn.execute(
        update(runner_sessions)
        .where(_S.id == session_id, _S.closed_at.is_(None), _S.detached_at.is_(None))
        .values(detached_at=now)
    )
    return res.rowcount == 1


def sessions_detached_before(conn: Connection, cutoff: datetime) -> list[int]:
    rows = conn.execute(select(_S.id).where(_S.closed_at.is_(None), _S.detached_at < cutoff))
    return list(rows.scalars())


def attached_sessions_silent_since(
    conn: Connection, replica_id: str, *, busy_cutoff: datetime, idle_cutoff: datetime
) -> list[int]:
    """Attached sessions of ``replica_id`` silent too long: last heard before
    ``busy_cutoff`` while holding an execution assigned before it, or before
    ``idle_cutoff`` at all (idle runners may send fewer heartbeats). Only the replica
    holding a stream judges its silence: when that replica dies, the silence is its
    fault, not the runner's, so its sessions are detached at the end of its lease and
    keep their re-attach grace.

    Two reads, each off an index, so that ten thousand idle streams cost nothing but
    the silent ones: the idle read is a range of ix_runner_sessions_attached; the busy
    one starts from the open executions (few), each looking up its session."""
    attached = (
        _S.replica_id == replica_id,
        _S.closed_at.is_(None),
        _S.detached_at.is_(None),
    )
    idle = conn.execute(select(_S.id).where(*attached, _S.last_seen_at < idle_cutoff))
    silent_holder = (
        select(_S.id)
        .where(_S.id == _E.session_id, *attached, _S.last_seen_at < busy_cutoff)
        .exists()
    )
    busy = conn.execute(
        select(_E.session_id)
        .distinct()
        .where(_E.finished_at.is_(None), _E.started_at < busy_cutoff, silent_holder)
    )
    return sorted({*idle.scalars(), *busy.scalars()})


def open_sessions_of_runner(conn: Connection, runner: str) -> list[int]:
    rows = conn.execute(select(_S.id).where(_S.runner_name == runner, _S.closed_at.is_(None)))
    return list(rows.scalars())


def close_session(conn: Connection, session_id: int, reason: str, now: datetime) -> bool:
    if conn.dialect.name == "postgresql":
        # Wait for claims binding jobs to this session (see lock_sessions_to_claim_for).
        conn.execute(select(_S.id).where(_S.id == session_id).with_for_update())
    res = conn.execute(
        update(runner_sessions)
        .where(_S.id == session_id, _S.closed_at.is_(None))
        .values(closed_at=now, close_reason=reason)
    )
    return res.rowcount == 1


def session_runner(conn: Connection, session_id: int) -> str | None:
    value: str | None = conn.execute(
        select(_S.runner_name).where(_S.id == session_id)
    ).scalar_one_or_none()
    return value


# --- replicas ---------------------------------------------------------------------


def register_replica(
    conn: Connection, replica_id: str, version: str, now: datetime, lease_until: datetime
) -> None:
    conn.execute(
        insert(replicas).values(
            id=replica_id, version=version, started_at=now, lease_until=lease_until
        )
    )


def replica_lease_until(conn: Connection, replica_id: str) -> datetime | None:
    lease: datetime | None = conn.execute(
        select(replicas.c.lease_until).where(replicas.c.id == replica_id)
    ).scalar_one_or_none()
    return lease


def renew_replica(conn: Connection, replica_id: str, lease_until: datetime) -> bool:
    res = conn.execute(
        update(replicas).where(replicas.c.id == replica_id).values(lease_until=lease_until)
    )
    return res.rowcount == 1


def remove_replica(conn: Connection, replica_id: str) -> None:
    conn.execute(delete(replicas).where(replicas.c.id == replica_id))


def live_replica_count(conn: Connection, now: datetime) -> int:
    return int(
        conn.execute(
            select(func.count()).select_from(replicas).where(replicas.c.lease_until >= now)
        ).scalar_one()
    )


def orphaned_attached_sessions(
    conn: Connection, replica_id: str, now: datetime
) -> list[tuple[int, datetime]]:
    """Attached sessions of other replicas that are gone (lease expired, or no row), each
    with the moment its replica was presumed dead: the end of its lease (``now`` when
    the row is gone).

    First the least and greatest replica holding open sessions, off the partial index:
    when both are ``replica_id`` (one replica, the usual case) there is nothing to
    look at, whatever the number of streams."""
    # Two subqueries: SQLite reads a lone min() or max() off an index, not both at once.
    holders = select(_S.replica_id).where(_S.closed_at.is_(None))
    lowest, highest = conn.execute(
        select(
            holders.with_only_columns(func.min(_S.replica_id)).scalar_subquery(),
            holders.with_only_columns(func.max(_S.replica_id)).scalar_subquery(),
        )
    ).one()
    if lowest is None or lowest == highest == replica_id:
        return []
    rows = conn.execute(
        select(_S.id, replicas.c.lease_until)
        .select_from(runner_sessions.outerjoin(replicas, replicas.c.id == _S.replica_id))
        .where(
            _S.closed_at.is_(None),
            _S.detached_at.is_(None),
            _S.replica_id != replica_id,
            or_(replicas.c.id.is_(None), replicas.c.lease_until < now),
        )
    )
    return [(r.id, r.lease_until or now) for r in rows]


def reattach_orphaned_sessions(
    conn: Connection,
    replica_id: str,
    session_ids: Collection[int],
    lease_ends: Collection[datetime],
) -> list[int]:
    """Of ``session_ids`` (streams this replica holds), those that other replicas
    detached when this replica's lease ran out (it was frozen or cut off, not dead):
    attached again. They were detached at one of ``lease_ends``, ends of this replica's
    leases that ran out; a session detached at another moment lost its stream."""
    if not session_ids or not lease_ends:
        return []
    res = conn.execute(
        update(runner_sessions)
        .where(
            _S.id.in_(sorted(session_ids)),
            _S.replica_id == replica_id,
            _S.closed_at.is_(None),
            _S.detached_at.in_(sorted(lease_ends)),
        )
        .values(detached_at=None)
        .returning(_S.id)
    )
    return sorted(res.scalars())


def expire_other_replicas(conn: Connection, replica_id: str, now: datetime) -> None:
    """End the leases of every other replica (the embedded mode runs one process)."""
    conn.execute(
        update(replicas)
        .where(replicas.c.id != replica_id, replicas.c.lease_until >= now)
        .values(lease_until=now)
    )


# --- what streams on this replica should know -----------------------------------------


# Beyond this many draining runners, their sessions are found by a join instead.
MAX_NAMES_LISTED = 500


def open_streams_digest(conn: Connection, replica_id: str) -> tuple[int, int]:
    """(how many, sum of ids) of the open sessions of ``replica_id``: read off its
    partial index without a row per session reaching Python."""
    row = conn.execute(
        select(func.count(), func.coalesce(func.sum(_S.id), 0)).where(
            _S.replica_id == replica_id, _S.closed_at.is_(None)
        )
    ).one()
    return int(row[0]), int(row[1])


def open_streams_of_replica(conn: Connection, replica_id: str) -> set[int]:
    """The open sessions of ``replica_id`` (read off its partial index)."""
    return set(
        conn.execute(
            select(_S.id).where(_S.replica_id == replica_id, _S.closed_at.is_(None))
        ).scalars()
    )


def draining_streams_of_replica(conn: Connection, replica_id: str) -> set[int]:
    """The open sessions of ``replica_id`` whose runner is draining: the draining
    runners first (few, off ix_runners_draining), then their sessions."""
    names = list(
        conn.execute(select(_R.name).where(_R.state == RunnerState.DRAINING.value)).scalars()
    )
    if not names:
        return set()
    if len(names) > MAX_NAMES_LISTED:
        return set(
            conn.execute(
                select(_S.id)
                .select_from(runners.join(runner_sessions, _S.runner_name == _R.name))
                .where(
                    _R.state == RunnerState.DRAINING.value,
                    _S.replica_id == replica_id,
                    _S.closed_at.is_(None),
                )
            ).scalars()
        )
    return set(
        conn.execute(
            select(_S.id).where(
                _S.runner_name.in_(names), _S.replica_id == replica_id, _S.closed_at.is_(None)
            )
        ).scalars()
    )


def cancels_pending_on(conn: Connection, replica_id: str) -> list[tuple[int, int]]:
    """(session id, execution id) of the open executions on sessions of ``replica_id``
    whose job's cancel was asked and not yet confirmed."""
    rows = conn.execute(
        select(_E.session_id, _E.id)
        .select_from(
            jobs.join(executions, jobs.c.current_execution_id == _E.id).join(
                runner_sessions, _S.id == _E.session_id
            )
        )
        .where(
            jobs.c.state == "BUILDING",
            jobs.c.cancel_requested_at.is_not(None),
            _E.finished_at.is_(None),
            _S.replica_id == replica_id,
        )
        .order_by(_E.id)
    )
    return [(r.session_id, r.id) for r in rows]
