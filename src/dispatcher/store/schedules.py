"""Named queries about schedules: recurring job templates (SPEC §3)."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, and_, exists, insert, select, update

from dispatcher.domain.model import JobSpec, RetryPolicy, Schedule, ScheduleSpec, ScheduleState
from dispatcher.domain.states import UNFINISHED_STATES, OnLostPolicy
from dispatcher.store.sql import delta as _delta
from dispatcher.store.sql import seconds as _seconds
from dispatcher.store.tables import jobs, schedules

_S = schedules.c
_J = jobs.c


def encode_spec(spec: JobSpec) -> dict[str, Any]:
    """A job template as JSON. not_before, origin_time and idempotency key are per run,
    so a template has none."""
    retry = spec.retry
    return {
        "platform": spec.platform,
        "command": list(spec.command),
        "queue": spec.queue,
        "labels": sorted(spec.labels),
        "payload": base64.b64encode(spec.payload).decode(),
        "priority": spec.priority,
        "coalesce_keys": sorted(spec.coalesce_keys),
        "dedupe_key": spec.dedupe_key,
        "distributor": spec.distributor,
        "on_lost": spec.on_lost.value,
        "retry": {
            "max_attempts": retry.max_attempts,
            "initial_delay": retry.initial_delay.total_seconds(),
            "multiplier": retry.multiplier,
            "max_delay": retry.max_delay.total_seconds(),
            "max_lost": retry.max_lost,
        },
        "subject": spec.subject,
        "process": spec.process,
        "failure_backoff": _seconds(spec.failure_backoff),
        "max_wait": _seconds(spec.max_wait),
        "max_run": _seconds(spec.max_run),
    }


def decode_spec(data: dict[str, Any]) -> JobSpec:
    retry = data["retry"]
    return JobSpec(
        platform=data["platform"],
        command=tuple(data["command"]),
        queue=data["queue"],
        labels=frozenset(data["labels"]),
        payload=base64.b64decode(data["payload"]),
        priority=data["priority"],
        coalesce_keys=frozenset(data["coalesce_keys"]),
        dedupe_key=data["dedupe_key"],
        distributor=data["distributor"],
        on_lost=OnLostPolicy(data["on_lost"]),
        retry=RetryPolicy(
            max_attempts=retry["max_attempts"],
            initial_delay=timedelta(seconds=retry["initial_delay"]),
            multiplier=retry["multiplier"],
            max_delay=timedelta(seconds=retry["max_delay"]),
            max_lost=retry["max_lost"],
        ),
        subject=data["subject"],
        process=data["process"],
        failure_backoff=_delta(data["failure_backoff"]),
        max_wait=_delta(data["max_wait"]),
        max_run=_delta(data["max_run"]),
    )


def insert_schedule(conn: Connection, spec: ScheduleSpec, now: datetime) -> int:
    values = {
        "name": spec.name,
        "job_spec": encode_spec(spec.job),
        "interval_seconds": spec.interval.total_seconds(),
        "max_failures": spec.max_failures,
        "state": ScheduleState.ACTIVE.value,
        "next_due_at": spec.job.not_before or now,
        "created_at": now,
    }
    return int(conn.execute(insert(schedules).returning(_S.id), values).scalar_one())


def _pending() -> Any:
    return select(_J.id).where(
        _J.schedule_id == _S.id, _J.state.in_(sorted(s.value for s in UNFINISHED_STATES))
    )


def _to_schedule(row: Row[Any]) -> Schedule:
    return Schedule(
        spec=ScheduleSpec(
            name=row.name,
            job=decode_spec(row.job_spec),
            interval=timedelta(seconds=row.interval_seconds),
            max_failures=row.max_failures,
        ),
        state=ScheduleState(row.state),
        consecutive_failures=row.consecutive_failures,
        next_due_at=row.next_due_at,
        last_started_at=row.last_started_at,
        pending_job_id=row.pending_job_id,
    )


def _schedule_query() -> Any:
    return select(schedules, _pending().scalar_subquery().label("pending_job_id"))


def get_schedule(
    conn: Connection, name: str, *, for_update: bool = False
) -> tuple[int, Schedule] | None:
    query = _schedule_query().where(_S.name == name)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update(of=schedules)
    row = conn.execute(query).first()
    return (row.id, _to_schedule(row)) if row else None


def get_schedule_by_id(conn: Connection, schedule_id: int) -> Schedule | None:
    row = conn.execute(_schedule_query().where(_S.id == schedule_id)).first()
    return _to_schedule(row) if row else None


def list_schedules(conn: Connection) -> list[Schedule]:
    return [_to_schedule(r) for r in conn.execute(_schedule_query().order_by(_S.name))]


def schedules_without_pending_job(conn: Connection, limit: int) -> list[tuple[int, Schedule]]:
    """Active schedules that have no unfinished job: the tick makes their next one."""
    query = (
        _schedule_query()
        .where(_S.state == ScheduleState.ACTIVE.value, ~exists(_pending()))
        .order_by(_S.next_due_at)
        .limit(limit)
    )
    return [(r.id, _to_schedule(r)) for r in conn.execute(query)]


def update_schedule(conn: Connection, schedule_id: int, **values: Any) -> None:
    """Set some of: state, consecutive_failures, next_due_at, last_started_at."""
    allowed = {"state", "consecutive_failures", "next_due_at", "last_started_at"}
    unknown = set(values) - allowed
    if unknown:
        raise ValueError(f"not schedule columns: {sorted(unknown)}")
    if "state" in values:
        values["state"] = ScheduleState(values["state"]).value
    conn.execute(update(schedules).where(and_(_S.id == schedule_id)).values(values))
