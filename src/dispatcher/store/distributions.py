"""Named queries about distributor executions, raw job data and backend health."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from dispatcher.domain.distribution import BackendHealth, DistributorExecution
from dispatcher.domain.model import Job
from dispatcher.domain.states import JobState
from dispatcher.store.jobs import coalesce_blocked, get_jobs
from dispatcher.store.sql import insert_ignoring_conflicts
from dispatcher.store.tables import (
    distributor_health,
    executions,
    jobs,
)

_J = jobs.c
_E = executions.c
_D = distributor_health.c


def open_count(conn: Connection, name: str) -> int:
    """Unfinished executions of the instance ``name`` (its parallelism in use)."""
    query = select(func.count()).where(_E.distributor == name, _E.finished_at.is_(None))
    return int(conn.execute(query).scalar_one())


def claimable_jobs(conn: Connection, name: str, limit: int, now: datetime) -> list[Job]:
    """The next ``limit`` QUEUED jobs of distributor ``name`` in claim order (SPEC §5.2),
    locked for this transaction (skipping rows another replica is claiming)."""
    query = (
        select(_J.id)
        .where(
            _J.state == JobState.QUEUED.value,
            _J.distributor == name,
            _J.not_before <= now,
            ~coalesce_blocked(),
        )
        .order_by(_J.priority.desc(), _J.not_before, _J.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=jobs)
    ids = list(conn.execute(query).scalars())
    found = get_jobs(conn, ids)
    return [found[i] for i in ids]


def queued_count(conn: Connection, name: str) -> int:
    query = select(func.count()).where(_J.state == JobState.QUEUED.value, _J.distributor == name)
    return int(conn.execute(query).scalar_one())


def insert_execution(
    conn: Connection,
    job_id: int,
    number: int,
    name: str,
    config: Mapping[str, Any],
    token_hash: str,
    now: datetime,
    deadline_at: datetime | None,
) -> int:
    values = {
        "job_id": job_id,
        "number": number,
        "runner_name": "",
        "session_id": None,
        "started_at": now,
        "result": b"",
        "deadline_at": deadline_at,
        "distributor": name,
        "config_snapshot": dict(config),
        "token_hash": token_hash,
    }
    return int(conn.execute(insert(executions).returning(_E.id), values).scalar_one())


def _to_execution(row: Row[Any]) -> DistributorExecution:
    m = row._mapping
    return DistributorExecution(
        id=m["id"],
        job_id=m["job_id"],
        number=m["number"],
        distributor=m["distributor"],
        config=dict(m["config_snapshot"] or {}),
        token_hash=m["token_hash"] or "",
        backend_token=m["backend_token"],
        info_url=m["info_url"],
        started_at=m["started_at"],
        poll_at=m["poll_at"],
        poll_failures=m["poll_failures"],
        finished_at=m["finished_at"],
        released_at=m["released_at"],
    )


def get_execution(conn: Connection, execution_id: int) -> DistributorExecution | None:
    """The execution when a distributor runs it; None for runner executions or none."""
    row = conn.execute(
        select(executions).where(_E.id == execution_id, _E.distributor != "")
    ).first()
    return _to_execution(row) if row else None


def record_run(
    conn: Connection, execution_id: int, backend_token: str, info_url: str, poll_at: datetime
) -> bool:
    res = conn.execute(
        update(executions)
        .where(_E.id == execution_id, _E.finished_at.is_(None))
        .values(backend_token=backend_token, info_url=info_url, poll_at=poll_at)
    )
    return res.rowcount == 1


def set_poll(conn: Connection, execution_id: int, at: datetime, failures: int) -> None:
    conn.execute(
        update(executions)
        .where(_E.id == execution_id, _E.finished_at.is_(None))
        .values(poll_at=at, poll_failures=failures)
    )


def touch(conn: Connection, execution_id: int, now: datetime) -> None:
    conn.execute(
        update(executions)
        .where(_E.id == execution_id, _E.finished_at.is_(None))
        .values(last_heartbeat_at=now)
    )


def _open(name: str) -> list[Any]:
    return [_E.distributor == name, _E.finished_at.is_(None), _E.released_at.is_(None)]


def due_polls(conn: Connection, name: str, now: datetime, limit: int) -> list[DistributorExecution]:
    """Running executions of ``name`` whose poll time has come, oldest poll first."""
    rows = conn.execute(
        select(executions)
        .where(*_open(name), _E.backend_token != "", _E.poll_at <= now)
        .order_by(_E.poll_at)
        .limit(limit)
    )
    return [_to_execution(r) for r in rows]


def next_poll_at(conn: Connection, name: str) -> datetime | None:
    value: datetime | None = conn.execute(
        select(func.min(_E.poll_at)).where(*_open(name), _E.backend_token != "")
    ).scalar_one_or_none()
    return value


def unstarted_before(conn: Connection, name: str, cutoff: datetime) -> list[DistributorExecution]:
    """Open executions whose run() never recorded a token (a replica died mid-run)."""
    rows = conn.execute(
        select(executions).where(*_open(name), _E.backend_token == "", _E.started_at < cutoff)
    )
    return [_to_execution(r) for r in rows]


def cancel_requested(conn: Connection, name: str) -> list[DistributorExecution]:
    """Open, started executions of ``name`` whose job an operator asked to cancel."""
    rows = conn.execute(
        select(executions)
        .select_from(executions.join(jobs, _J.current_execution_id == _E.id))
        .where(
            *_open(name),
            _E.backend_token != "",
            _J.state == JobState.BUILDING.value,
            _J.cancel_requested_at.is_not(None),
        )
    )
    return [_to_execution(r) for r in rows]


def unreleased_finished(conn: Connection, name: str, limit: int) -> list[DistributorExecution]:
    """Finished executions of ``name`` the backend was not yet told to stop."""
    rows = conn.execute(
        select(executions)
        .where(_E.distributor == name, _E.finished_at.is_not(None), _E.released_at.is_(None))
        .limit(limit)
    )
    return [_to_execution(r) for r in rows]


def mark_released(conn: Connection, execution_id: int, now: datetime) -> None:
    conn.execute(
        update(executions)
        .where(_E.id == execution_id, _E.released_at.is_(None))
        .values(released_at=now)
    )


def merge_raw(conn: Connection, job_id: int, raw: Mapping[str, Any], now: datetime) -> None:
    """Merge ``raw`` into the job's raw JSON, key by key (the caller holds the row)."""
    current = conn.execute(select(_J.raw).where(_J.id == job_id)).scalar_one_or_none() or {}
    merged = {**current, **raw}
    conn.execute(update(jobs).where(_J.id == job_id).values(raw=merged, updated_at=now))


def raw_of(conn: Connection, job_id: int) -> dict[str, Any]:
    value = conn.execute(select(_J.raw).where(_J.id == job_id)).scalar_one_or_none()
    return dict(value or {})


# --- backend health ---------------------------------------------------------------


def _to_health(row: Row[Any]) -> BackendHealth:
    return BackendHealth(
        name=row.name,
        up=row.up,
        down_since=row.down_since,
        cause=row.cause,
        next_probe_at=row.next_probe_at,
        probe_interval=timedelta(seconds=row.probe_interval_seconds),
    )


def get_health(conn: Connection, name: str) -> BackendHealth:
    row = conn.execute(select(distributor_health).where(_D.name == name)).first()
    return _to_health(row) if row else BackendHealth(name)


def all_health(conn: Connection) -> dict[str, BackendHealth]:
    return {r.name: _to_health(r) for r in conn.execute(select(distributor_health))}


def save_health(conn: Connection, health: BackendHealth, now: datetime) -> None:
    values = {
        "up": health.up,
        "down_since": health.down_since,
        "cause": health.cause,
        "next_probe_at": health.next_probe_at,
        "probe_interval_seconds": health.probe_interval.total_seconds(),
        "updated_at": now,
    }
    # Insert-or-nothing first, so two replicas marking the same backend down at once
    # do not collide on the primary key; then the update wins as the last writer.
    conn.execute(
        insert_ignoring_conflicts(conn, distributor_health), {"name": health.name, **values}
    )
    conn.execute(update(distributor_health).where(_D.name == health.name).values(values))


def set_token_hash(conn: Connection, execution_id: int, token_hash: str) -> None:
    conn.execute(update(executions).where(_E.id == execution_id).values(token_hash=token_hash))
