"""Named queries about runners, their sessions and the replicas that hold them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from dispatcher.domain.model import Runner, RunnerHello, RunnerState
from dispatcher.store.tables import executions, replicas, runner_sessions, runners

_R = runners.c
_S = runner_sessions.c


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


def quarantined_runners(conn: Connection, names: list[str], now: datetime) -> dict[str, datetime]:
    """Which of these runners get no work now, and until when."""
    rows = conn.execute(
        select(_R.name, _R.quarantined_until).where(
            _R.name.in_(sorted(set(names))), _R.quarantined_until > now
        )
    )
    return {r.name: r.quarantined_until for r in rows}


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


def lock_open_sessions(conn: Connection, session_ids: list[int]) -> set[int]:
    """Which of these sessions are still open, holding them until the transaction ends
    so that a concurrent close waits for this transaction (and then sees what it bound).

    PostgreSQL: FOR KEY SHARE, in id order. Heartbeats (plain UPDATEs of the row) pass
    it; ``close_session`` takes FOR UPDATE, which waits for it."""
    query = select(_S.id).where(_S.id.in_(sorted(session_ids)), _S.closed_at.is_(None))
    if conn.dialect.name == "postgresql":
        query = query.order_by(_S.id).with_for_update(key_share=True, read=True)
    return set(conn.execute(query).scalars())


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


def touch_session(conn: Connection, session_id: int, now: datetime) -> None:
    conn.execute(
        update(runner_sessions)
        .where(_S.id == session_id, _S.closed_at.is_(None))
        .values(last_seen_at=now)
    )


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
    conn: Connection, replica_id: str, cutoff: datetime
) -> list[int]:
    """Attached sessions of ``replica_id`` whose last heartbeat is older than ``cutoff``.
    Only the replica holding a stream judges its silence: when that replica dies, the
    silence is its fault, not the runner's, so its sessions are detached at the end of
    its lease and keep their re-attach grace."""
    rows = conn.execute(
        select(_S.id).where(
            _S.replica_id == replica_id,
            _S.closed_at.is_(None),
            _S.detached_at.is_(None),
            _S.last_seen_at < cutoff,
        )
    )
    return list(rows.scalars())


def open_sessions_of_runner(conn: Connection, runner: str) -> list[int]:
    rows = conn.execute(select(_S.id).where(_S.runner_name == runner, _S.closed_at.is_(None)))
    return list(rows.scalars())


def close_session(conn: Connection, session_id: int, reason: str, now: datetime) -> bool:
    if conn.dialect.name == "postgresql":
        # Wait for claims binding jobs to this session (see lock_open_sessions).
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


def orphaned_attached_sessions(conn: Connection, replica_id: str, now: datetime) -> list[int]:
    """Attached sessions of other replicas that are gone: lease expired, or no row."""
    live = select(replicas.c.id).where(replicas.c.lease_until >= now)
    rows = conn.execute(
        select(_S.id).where(
            _S.closed_at.is_(None),
            _S.detached_at.is_(None),
            _S.replica_id != replica_id,
            _S.replica_id.not_in(live),
        )
    )
    return list(rows.scalars())


def expire_other_replicas(conn: Connection, replica_id: str, now: datetime) -> None:
    """End the leases of every other replica (the embedded mode runs one process)."""
    conn.execute(
        update(replicas)
        .where(replicas.c.id != replica_id, replicas.c.lease_until >= now)
        .values(lease_until=now)
    )
