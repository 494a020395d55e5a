"""Named queries about jobs, their executions and their events."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from json.encoder import encode_basestring_ascii
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Connection,
    Dialect,
    Result,
    Row,
    and_,
    bindparam,
    delete,
    exists,
    func,
    null,
    or_,
    select,
    text,
    update,
)

from dispatcher.domain.model import Job, JobFilter, JobSpec, RetryPolicy
from dispatcher.domain.states import (
    UNFINISHED_STATES,
    JobState,
    OnLostPolicy,
    Transition,
)
from dispatcher.store import events as event_store
from dispatcher.store import runners as runner_store
from dispatcher.store.executions import insert_executions
from dispatcher.store.sql import delta as _delta
from dispatcher.store.sql import (
    execute_prepared,
    insert_ignoring_conflicts,
    pg_array,
    pg_array_of,
    pg_time,
    pg_value_of,
    sqlite_execute_rows,
    sqlite_insert_rows,
    sqlite_insert_sql,
)
from dispatcher.store.sql import seconds as _seconds
from dispatcher.store.tables import (
    UtcDateTime,
    backoffs,
    coalesce_holds,
    executions,
    flavors,
    job_coalesce_keys,
    job_events,
    job_labels,
    jobs,
    schedules,
    sqlite_time,
)

_J = jobs.c
_E = executions.c
_H = coalesce_holds.c
_K = job_coalesce_keys.c
_B = backoffs.c


def _spec_values(spec: JobSpec) -> dict[str, Any]:
    retry = spec.retry
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
        "subject": spec.subject,
        "process": spec.process,
        "failure_backoff_seconds": _seconds(spec.failure_backoff),
        "retry_max_attempts": retry.max_attempts,
        "retry_initial_delay_seconds": retry.initial_delay.total_seconds(),
        "retry_multiplier": retry.multiplier,
        "retry_max_delay_seconds": retry.max_delay.total_seconds(),
        "retry_max_lost": retry.max_lost,
        "max_wait_seconds": _seconds(spec.max_wait),
        "max_run_seconds": _seconds(spec.max_run),
    }


@dataclass(frozen=True)
class NewJob:
    """A job to insert, with what admission decided about it."""

    spec: JobSpec
    state: JobState
    info: str = ""
    flavor_id: int | None = None
    schedule_id: int | None = None
    duplicate_of: int | None = None


def insert_jobs(
    conn: Connection,
    new: Sequence[NewJob],
    now: datetime,
    events: Sequence[dict[str, Any]] | None = None,
) -> list[int]:
    """Insert jobs and return their ids, in order: one statement for the whole batch.
    ``events``: one audit event per job (its job_id filled in here), written with them;
    on PostgreSQL in the same statement as the jobs, their labels and keys."""
    if not new:
        return []
    if conn.dialect.name == "sqlite":
        ids = _insert_jobs_sqlite(conn, new, now)
    else:
        logged = events if events and not event_store.buffering(conn) else None
        ids = _insert_jobs_postgresql(conn, new, now, logged)
        if logged:
            events = None
    if events:
        event_store.insert_events(
            conn, [{**event, "job_id": i} for i, event in zip(ids, events, strict=True)]
        )
    return ids


def _job_values(job: NewJob, now: datetime) -> dict[str, Any]:
    spec = job.spec
    values = _spec_values(spec)
    values.update(
        not_before=spec.not_before or now,
        state=job.state.value,
        info=job.info,
        flavor_id=job.flavor_id,
        schedule_id=job.schedule_id,
        duplicate_of=job.duplicate_of,
        created_at=now,
        updated_at=now,
        finished_at=now if job.state.terminal else None,
        expires_at=now + spec.max_wait if spec.max_wait else None,
    )
    return values


_EVENT_COLUMNS = ("execution_id", "kind", "from_state", "to_state", "actor", "cause", "at")


def _job_and_event_params(values: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """A job's values as ``j_<column>`` and its event's as ``e_<column>``: the parameters
    of the statements that write both at once."""
    params = {f"j_{name}": value for name, value in values.items()}
    params.update((f"e_{name}", event.get(name)) for name in _EVENT_COLUMNS)
    return params


@dataclass(frozen=True)
class BoundAtInsert:
    """What :func:`insert_job_bound` made: the job and, when a session took it, its
    first execution and the session's runner."""

    job_id: int
    execution_id: int | None
    session_id: int | None
    runner: str | None


def binds_at_insert(conn: Connection) -> bool:
    """Whether :func:`insert_job_bound` serves here: PostgreSQL, outside a block that
    buffers events."""
    return conn.dialect.name == "postgresql" and not event_store.buffering(conn)


def insert_job_bound(
    conn: Connection,
    new: NewJob,
    event: dict[str, Any],
    now: datetime,
    *,
    session_ids: Sequence[int],
    claim_event: str,
) -> BoundAtInsert:
    """PostgreSQL: INSERT a QUEUED job with its event and its labels and, in the same
    statement, bind it to the first of ``session_ids`` that may take work (open, its
    runner not in quarantine; held FOR KEY SHARE as :func:`lock_sessions_to_claim_for`
    holds them): its first execution, the job BUILDING from the start, and a
    ``claim_event`` after its submit event. No session ready: the job stays QUEUED.

    An idle farm's submit is this one statement; the job never sits in the queue's
    index. A job with coalesce keys takes holds first, so it goes the claim's way."""
    if new.state is not JobState.QUEUED or new.spec.coalesce_keys:
        raise ValueError("only a QUEUED job without coalesce keys is bound at its insert")
    values = _job_values(new, now)
    del values["state"]
    params = _job_and_event_params(values, event)
    spec = new.spec
    params.update(
        session_ids=list(session_ids),
        now=now,
        claim_kind=claim_event,
        deadline=now + spec.max_run if spec.max_run else None,
        labels=sorted(spec.labels),
    )
    row = execute_prepared(conn, _bound_job_statement(tuple(values)), params).one()
    return BoundAtInsert(row.job_id, row.execution_id, row.session_id, row.runner_name)


@cache
def _bound_job_statement(columns: tuple[str, ...]) -> Any:
    # The ids come first, from the tables' sequences, so that the job can name its
    # execution and the execution its job within one statement. Only names from the
    # table definitions are formatted in.
    sql = f"""
    WITH ready AS MATERIALIZED ({runner_store.PG_SESSIONS_TO_CLAIM_FOR}),
    chosen AS MATERIALIZED (
        SELECT id, runner_name FROM ready
        ORDER BY array_position(CAST(:session_ids AS BIGINT[]), id)
        LIMIT 1
    ), ids AS MATERIALIZED (
        SELECT nextval(pg_get_serial_sequence('jobs', 'id')) AS job_id,
               chosen.id AS session_id, chosen.runner_name,
               CASE WHEN chosen.id IS NOT NULL
                    THEN nextval(pg_get_serial_sequence('executions', 'id')) END AS execution_id
        FROM (VALUES (1)) AS one LEFT JOIN chosen ON true
    ), made AS (
        INSERT INTO jobs (id, {", ".join(columns)}, state, attempt, current_execution_id)
        SELECT job_id, {", ".join(f":j_{name}" for name in columns)},
               CASE WHEN execution_id IS NULL THEN 'QUEUED' ELSE 'BUILDING' END,
               CASE WHEN execution_id IS NULL THEN 0 ELSE 1 END,
               execution_id
        FROM ids
    ), started AS (
        INSERT INTO executions (id, job_id, number, runner_name, session_id, started_at,
                                result, deadline_at)
        SELECT execution_id, job_id, 1, runner_name, session_id, :now, '', :deadline
        FROM ids WHERE execution_id IS NOT NULL
    ), labelled AS (
        INSERT INTO job_labels (job_id, label)
        SELECT ids.job_id, label FROM ids, unnest(CAST(:labels AS VARCHAR[])) AS label
    ), logged AS (
        INSERT INTO job_events (job_id, execution_id, kind, from_state, to_state, actor,
                                cause, at)
        SELECT ids.job_id, e.execution_id, e.kind, e.from_state, e.to_state, e.actor,
               e.cause, e.at
        FROM ids CROSS JOIN LATERAL (VALUES
            (1, CAST(:e_execution_id AS BIGINT), :e_kind, :e_from_state, :e_to_state,
             :e_actor, :e_cause, :e_at),
            (2, ids.execution_id, :claim_kind, 'QUEUED', 'BUILDING',
             'runner:' || ids.runner_name, '', :now)
        ) AS e(step, execution_id, kind, from_state, to_state, actor, cause, at)
        WHERE e.step = 1 OR ids.execution_id IS NOT NULL
        ORDER BY e.step
    )
    SELECT job_id, execution_id, session_id, runner_name FROM ids
    """  # noqa: S608
    return text(sql).bindparams(
        *(bindparam(f"j_{name}", type_=_J[name].type) for name in columns),
        *(bindparam(f"e_{name}", type_=job_events.c[name].type) for name in _EVENT_COLUMNS),
        bindparam("now", type_=UtcDateTime()),
        bindparam("deadline", type_=UtcDateTime()),
    )


# Job columns SQLite stores as text: times (sqlite_time) and JSON lists of strings.
_TIME_COLUMNS = frozenset(
    {"not_before", "origin_time", "created_at", "updated_at", "finished_at", "expires_at"}
)
_JSON_COLUMNS = frozenset({"labels", "command", "coalesce_keys"})


def _json_strings(items: Iterable[str]) -> str:
    """A list of strings as json.dumps writes it, without building an encoder per call."""
    return "[" + ", ".join(map(encode_basestring_ascii, items)) + "]"


def _sqlite_value(column: str, value: Any) -> Any:
    if column in _TIME_COLUMNS:
        return sqlite_time(value)
    if column in _JSON_COLUMNS:
        return _json_strings(value)
    return value


def _insert_jobs_sqlite(conn: Connection, new: Sequence[NewJob], now: datetime) -> list[int]:
    """:func:`insert_jobs` on SQLite: the same rows (:func:`_job_values`), as plain
    values (store/sql.py)."""
    values = [_job_values(job, now) for job in new]
    columns = tuple(values[0])
    rows = [tuple(_sqlite_value(c, v) for c, v in row.items()) for row in values]
    ids = sqlite_insert_rows(conn, jobs, columns, rows)
    labels = [
        (i, label) for i, job in zip(ids, new, strict=True) for label in sorted(job.spec.labels)
    ]
    sqlite_execute_rows(conn, sqlite_insert_sql("job_labels", ("job_id", "label")), labels)
    keys = [
        (i, key) for i, job in zip(ids, new, strict=True) for key in sorted(job.spec.coalesce_keys)
    ]
    sqlite_execute_rows(conn, sqlite_insert_sql("job_coalesce_keys", ("job_id", "key")), keys)
    return ids


def _insert_jobs_postgresql(
    conn: Connection,
    new: Sequence[NewJob],
    now: datetime,
    events: Sequence[dict[str, Any]] | None,
) -> list[int]:
    """:func:`insert_jobs` on PostgreSQL: the jobs, their labels, coalesce keys and
    ``events`` in one statement, each column one array (store/sql.py)."""
    values = [_job_values(job, now) for job in new]
    columns = tuple(values[0])
    params = {name: pg_array(_pg_column(name, [row[name] for row in values])) for name in columns}
    params["label_of"], params["label"] = _flattened(job.spec.labels for job in new)
    params["key_of"], params["key"] = _flattened(job.spec.coalesce_keys for job in new)
    if events:
        for name in _EVENT_COLUMNS:
            column = [event.get(name) for event in events]
            params[name] = pg_array(_pg_times(column) if name == "at" else column)
    statement = _pg_insert_jobs_sql(columns, conn.dialect, logged=bool(events))
    return [row[0] for row in conn.exec_driver_sql(statement, params)]


def _pg_column(name: str, values: list[Any]) -> list[Any]:
    if name in _TIME_COLUMNS:
        return _pg_times(values)
    if name in _JSON_COLUMNS:
        return [_json_strings(v) for v in values]
    return values


def _pg_times(values: list[datetime | None]) -> list[datetime | None]:
    # A batch's rows mostly share one time object ("now"): convert it once.
    converted: dict[int, datetime | None] = {}
    out = []
    for value in values:
        key = id(value)
        if key not in converted:
            converted[key] = pg_time(value)
        out.append(converted[key])
    return out


def _flattened(sets: Iterable[frozenset[str]]) -> tuple[str, str]:
    """Each job's strings, sorted, beside the job's place in the batch (from 1): two
    arrays."""
    places: list[int] = []
    items: list[str] = []
    for place, strings in enumerate(sets, start=1):
        for item in sorted(strings):
            places.append(place)
            items.append(item)
    return pg_array(places), pg_array(items)


@cache
def _pg_insert_jobs_sql(columns: tuple[str, ...], dialect: Dialect, *, logged: bool) -> str:
    # Each job's id is drawn beside its place in the batch, so the ids come back in the
    # order given whatever order PostgreSQL inserts in; labels, keys and events find
    # their job by its place. Only names from the table definitions are formatted in.
    arrays = ", ".join(pg_array_of(_J[name], dialect) for name in columns)
    log = ""
    if logged:
        event_arrays = ", ".join(pg_array_of(job_events.c[n], dialect) for n in _EVENT_COLUMNS)
        log = f""", logged AS (
        INSERT INTO job_events (job_id, {", ".join(_EVENT_COLUMNS)})
        SELECT input.id, {", ".join(f"e.{n}" for n in _EVENT_COLUMNS)}
        FROM unnest({event_arrays}) WITH ORDINALITY AS e({", ".join(_EVENT_COLUMNS)}, place)
        JOIN input USING (place)
        ORDER BY place
    )"""  # noqa: S608
    return f"""
    WITH input AS MATERIALIZED (
        SELECT nextval(pg_get_serial_sequence('jobs', 'id')) AS id, u.*
        FROM unnest({arrays}) WITH ORDINALITY AS u({", ".join(columns)}, place)
    ), made AS (
        INSERT INTO jobs (id, {", ".join(columns)})
        SELECT id, {", ".join(pg_value_of(_J[name]) for name in columns)} FROM input
    ), labelled AS ({_job_strings_insert("job_labels", "label")}
    ), keyed AS ({_job_strings_insert("job_coalesce_keys", "key")}
    ){log}
    SELECT id FROM input ORDER BY place
    """  # noqa: S608


def _job_strings_insert(table: str, column: str) -> str:
    # A job's labels or keys: %(<column>_of)s holds each one's job by its place in the
    # batch (see _flattened).
    return f"""
        INSERT INTO {table} (job_id, {column})
        SELECT input.id, s.{column}
        FROM unnest(CAST(%({column}_of)s AS BIGINT[]), CAST(%({column})s AS VARCHAR[]))
             AS s(place, {column})
        JOIN input USING (place)"""  # noqa: S608


def as_inserted(new: NewJob, job_id: int, now: datetime, *, flavor: str = "") -> Job:
    """The job :func:`insert_jobs` wrote, as :func:`get_job` would read it back, without
    the read: the defaults it filled in and times in UTC. ``flavor``: the name of the
    flavor ``new.flavor_id`` names."""
    spec = new.spec
    origin = spec.origin_time.astimezone(UTC) if spec.origin_time else None
    due = (spec.not_before or now).astimezone(UTC)
    return Job(
        id=job_id,
        spec=replace(spec, not_before=due, origin_time=origin),
        state=new.state,
        info=new.info,
        attempt=0,
        current_execution_id=None,
        duplicate_of=new.duplicate_of,
        created_at=now.astimezone(UTC),
        updated_at=now.astimezone(UTC),
        finished_at=now.astimezone(UTC) if new.state.terminal else None,
        flavor=flavor,
    )


def job_id_by_idempotency_key(conn: Connection, key: str) -> int | None:
    return conn.execute(select(_J.id).where(_J.idempotency_key == key)).scalar_one_or_none()


def job_columns() -> list[Any]:
    return [
        *jobs.c,
        executions.c.runner_name,
        flavors.c.name.label("flavor_name"),
        schedules.c.name.label("schedule_name"),
    ]


def _job_query() -> Any:
    return select(*job_columns()).select_from(
        jobs.outerjoin(executions, _E.id == _J.current_execution_id)
        .outerjoin(flavors, flavors.c.id == _J.flavor_id)
        .outerjoin(schedules, schedules.c.id == _J.schedule_id)
    )


# What to_job reads, by column name, in the order _job_from takes them.
_JOB_FIELDS = (
    "id",
    "queue",
    "platform",
    "labels",
    "command",
    "payload",
    "priority",
    "not_before",
    "coalesce_keys",
    "dedupe_key",
    "idempotency_key",
    "origin_time",
    "distributor",
    "on_lost",
    "retry_max_attempts",
    "retry_initial_delay_seconds",
    "retry_multiplier",
    "retry_max_delay_seconds",
    "retry_max_lost",
    "subject",
    "process",
    "failure_backoff_seconds",
    "max_wait_seconds",
    "max_run_seconds",
    "state",
    "info",
    "attempt",
    "current_execution_id",
    "duplicate_of",
    "created_at",
    "updated_at",
    "finished_at",
    "cancel_requested_at",
    "failures",
    "losses",
    "raw",
    "runner_name",
    "flavor_name",
    "schedule_name",
)


@cache
def _job_picker(keys: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """Picks to_job's values out of a row whose columns are named ``keys``, by position:
    a claim reads every column of every job it binds, and reading a Row by name cost
    more than making the Job. One picker per shape of statement."""
    return itemgetter(*(keys.index(name) for name in _JOB_FIELDS))


def to_job(row: Row[Any]) -> Job:
    return _job_from(_job_picker(tuple(row._fields))(row))


def to_jobs(rows: Result[Any]) -> list[Job]:
    """:func:`to_job` of every row of a result, its columns looked up once."""
    pick = _job_picker(tuple(rows.keys()))
    return [_job_from(pick(row)) for row in rows]


_JOB_STATES = {state.value: state for state in JobState}
_ON_LOST = {policy.value: policy for policy in OnLostPolicy}


@lru_cache(maxsize=256)
def _retry_policy(
    max_attempts: int, initial_delay: float, multiplier: float, max_delay: float, max_lost: int
) -> RetryPolicy:
    # Shared between jobs (it is frozen): nearly every job has one of a few policies.
    return RetryPolicy(
        max_attempts=max_attempts,
        initial_delay=timedelta(seconds=initial_delay),
        multiplier=multiplier,
        max_delay=timedelta(seconds=max_delay),
        max_lost=max_lost,
    )


def _job_from(values: tuple[Any, ...]) -> Job:
    (
        job_id,
        queue,
        platform,
        labels,
        command,
        payload,
        priority,
        not_before,
        coalesce_keys,
        dedupe_key,
        idempotency_key,
        origin_time,
        distributor,
        on_lost,
        retry_max_attempts,
        retry_initial_delay_seconds,
        retry_multiplier,
        retry_max_delay_seconds,
        retry_max_lost,
        subject,
        process,
        failure_backoff_seconds,
        max_wait_seconds,
        max_run_seconds,
        state,
        info,
        attempt,
        current_execution_id,
        duplicate_of,
        created_at,
        updated_at,
        finished_at,
        cancel_requested_at,
        failures,
        losses,
        raw,
        runner_name,
        flavor_name,
        schedule_name,
    ) = values
    spec = JobSpec(
        platform=platform,
        command=tuple(command),
        queue=queue,
        labels=frozenset(labels),
        payload=bytes(payload),
        priority=priority,
        not_before=not_before,
        coalesce_keys=frozenset(coalesce_keys),
        dedupe_key=dedupe_key or "",
        idempotency_key=idempotency_key or "",
        origin_time=origin_time,
        distributor=distributor,
        on_lost=_ON_LOST[on_lost],
        retry=_retry_policy(
            retry_max_attempts,
            retry_initial_delay_seconds,
            retry_multiplier,
            retry_max_delay_seconds,
            retry_max_lost,
        ),
        subject=subject,
        process=process,
        failure_backoff=_delta(failure_backoff_seconds),
        max_wait=_delta(max_wait_seconds),
        max_run=_delta(max_run_seconds),
    )
    job_state = _JOB_STATES[state]
    return Job(
        id=job_id,
        spec=spec,
        state=job_state,
        info=info,
        attempt=attempt,
        current_execution_id=current_execution_id,
        duplicate_of=duplicate_of,
        created_at=created_at,
        updated_at=updated_at,
        finished_at=finished_at,
        runner=(runner_name or "") if job_state is JobState.BUILDING else "",
        cancel_requested=cancel_requested_at is not None,
        flavor=flavor_name or "",
        schedule=schedule_name or "",
        failures=failures,
        losses=losses,
        raw=raw,
    )


_GET_JOB = _job_query().where(_J.id == bindparam("job_id"))
_GET_JOB_FOR_UPDATE = _GET_JOB.with_for_update(of=jobs)


def get_job(conn: Connection, job_id: int, *, for_update: bool = False) -> Job | None:
    locking = for_update and conn.dialect.name == "postgresql"
    row = conn.execute(_GET_JOB_FOR_UPDATE if locking else _GET_JOB, {"job_id": job_id}).first()
    return to_job(row) if row else None


def get_jobs(conn: Connection, job_ids: Iterable[int]) -> dict[int, Job]:
    ids = list(job_ids)
    if not ids:
        return {}  # the due sweep's usual case: nothing due, no query to build
    rows = conn.execute(_job_query().where(_J.id.in_(ids)))
    return {job.id: job for job in to_jobs(rows)}


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
    if flt.flavor:
        conds.append(flavors.c.name == flt.flavor)
    if flt.created_after:
        conds.append(_J.created_at >= flt.created_after)
    if flt.created_before:
        conds.append(_J.created_at < flt.created_before)
    if before_id is not None:
        conds.append(_J.id < before_id)
    rows = conn.execute(query.where(and_(True, *conds)).order_by(_J.id.desc()).limit(limit))
    return to_jobs(rows)


def coalesce_blocked() -> Any:
    """True for a job one of whose coalesce keys is held by a BUILDING job."""
    return exists(
        select(1)
        .select_from(job_coalesce_keys.join(coalesce_holds, _H.key == _K.key))
        .where(_K.job_id == _J.id)
    )


# Built once, with the runner's platform, labels and free slots as parameters: a claim
# is on the hot path, and building and caching a statement this size costs more than
# running it.
# A QUEUED job has no current execution, and its flavor and schedule names are read by
# subqueries, not joins: PostgreSQL plans this statement on every call (psycopg2 sends
# no prepared statements), and planning four joined tables cost more than running it.
_QUEUED_JOBS: Any = select(
    *jobs.c,
    null().label("runner_name"),
    select(flavors.c.name)
    .where(flavors.c.id == _J.flavor_id)
    .scalar_subquery()
    .label("flavor_name"),
    select(schedules.c.name)
    .where(schedules.c.id == _J.schedule_id)
    .scalar_subquery()
    .label("schedule_name"),
)
_CLAIMABLE = (
    _QUEUED_JOBS.where(
        # QUEUED jobs are due by construction (the due loop queues them), so the order
        # is read straight off ix_jobs_claim_order without a due filter.
        _J.state == JobState.QUEUED.value,
        _J.platform == bindparam("platform"),
        _J.distributor.in_(("", "runners")),  # other distributors' jobs are theirs
        ~exists().where(
            job_labels.c.job_id == _J.id,
            job_labels.c.label.not_in(bindparam("runner_labels", expanding=True)),
        ),
        ~coalesce_blocked(),
    )
    .order_by(_J.priority.desc(), _J.not_before, _J.id)
    .limit(bindparam("slots"))
)
_CLAIMABLE_SKIP_LOCKED = _CLAIMABLE.with_for_update(skip_locked=True, of=jobs)


def claimable_jobs(
    conn: Connection, platform: str, labels: frozenset[str], limit: int
) -> list[Job]:
    """The next ``limit`` QUEUED jobs a runner with ``platform``/``labels`` may take
    (SPEC §5.1: job labels ⊆ runner's), in claim order (SPEC §5.2), locked for this
    transaction. On PostgreSQL rows locked by another replica's claim are skipped, not
    waited for. The order is the one of ``ix_jobs_claim_order``, so the cost does not
    grow with the length of the queue."""
    query = _CLAIMABLE_SKIP_LOCKED if conn.dialect.name == "postgresql" else _CLAIMABLE
    params = {"platform": platform, "runner_labels": sorted(labels), "slots": limit}
    return to_jobs(conn.execute(query, params))


_ANY_QUEUED = select(_J.id).where(_J.state == JobState.QUEUED.value).limit(1)


def any_queued(conn: Connection) -> bool:
    """Whether any job is QUEUED (read off the claim order's partial index)."""
    return conn.execute(_ANY_QUEUED).first() is not None


def jobs_ahead(conn: Connection, job: Job) -> int:
    """QUEUED jobs of the same platform that come before ``job`` in claim order."""
    spec = job.spec
    ahead = or_(
        _J.priority > spec.priority,
        and_(_J.priority == spec.priority, _J.not_before < spec.not_before),
        and_(_J.priority == spec.priority, _J.not_before == spec.not_before, _J.id < job.id),
    )
    query = select(func.count()).where(
        _J.state == JobState.QUEUED.value, _J.platform == spec.platform, ahead
    )
    return int(conn.execute(query).scalar_one())


def coalesce_holders(conn: Connection, job_id: int) -> list[tuple[str, int]]:
    """(key, holding job id) for each of ``job_id``'s coalesce keys held by another job."""
    rows = conn.execute(
        select(_H.key, _H.job_id)
        .select_from(job_coalesce_keys.join(coalesce_holds, _H.key == _K.key))
        .where(_K.job_id == job_id, _H.job_id != job_id)
        .order_by(_H.key)
    )
    return [(r.key, r.job_id) for r in rows]


def acquire_coalesce_holds(conn: Connection, job_id: int, keys: frozenset[str]) -> bool:
    """Hold every key for ``job_id``, or none: False when another job holds one. The
    primary key of coalesce_holds decides races between replicas."""
    if not keys:
        return True
    rows = [{"key": key, "job_id": job_id} for key in sorted(keys)]
    taken = conn.execute(
        insert_ignoring_conflicts(conn, coalesce_holds).returning(_H.key), rows
    ).all()
    if len(taken) == len(keys):
        return True
    release_coalesce_holds(conn, job_id)
    return False


def release_coalesce_holds(conn: Connection, job_id: int) -> None:
    conn.execute(delete(coalesce_holds).where(_H.job_id == job_id))


def _backoff_active(now: datetime) -> Any:
    return exists().where(
        _B.subject == _J.subject, _B.process == _J.process, _B.until > now, _J.subject != ""
    )


# Made once: an alias builds its column collection anew each time it is made.
_LEADER = jobs.alias("leader")


def _dedupe_led() -> Any:
    leader = _LEADER
    return exists().where(
        leader.c.dedupe_key == _J.dedupe_key,
        leader.c.state.in_([JobState.QUEUED.value, JobState.BUILDING.value]),
    )


def _lacks_flavor() -> Any:
    """A job with no flavor on a platform that has flavors: none enabled serves it."""
    return and_(_J.flavor_id.is_(None), exists().where(flavors.c.platform == _J.platform))


def ready_noticed_jobs(conn: Connection, now: datetime, limit: int) -> list[Job]:
    """NOTICED jobs that may become QUEUED now: due, their subject not backed off, no
    job with their dedupe key runnable or running, and a flavor when their platform has
    flavors. Oldest due first."""
    query = (
        select(_J.id)
        .where(
            _J.state == JobState.NOTICED.value,
            _J.not_before <= now,
            ~_backoff_active(now),
            or_(_J.dedupe_key.is_(None), ~_dedupe_led()),
            ~_lacks_flavor(),
        )
        .order_by(_J.not_before, _J.id)
        .limit(limit)
    )
    ids = list(conn.execute(query).scalars())
    found = get_jobs(conn, ids)
    return [found[i] for i in ids]


def next_due_time(conn: Connection) -> datetime | None:
    value: datetime | None = conn.execute(
        select(func.min(_J.not_before)).where(_J.state == JobState.NOTICED.value)
    ).scalar_one_or_none()
    return value


def dedupe_leader(conn: Connection, key: str) -> int | None:
    """The job with dedupe key ``key`` that is QUEUED or BUILDING, if any."""
    query = select(_J.id).where(
        _J.dedupe_key == key, _J.state.in_([JobState.QUEUED.value, JobState.BUILDING.value])
    )
    return conn.execute(query).scalar_one_or_none()


def dedupe_active(conn: Connection, key: str) -> int | None:
    """The oldest unfinished job with dedupe key ``key``, if any."""
    query = (
        select(_J.id)
        .where(_J.dedupe_key == key, _J.state.in_(sorted(s.value for s in UNFINISHED_STATES)))
        .order_by(_J.id)
        .limit(1)
    )
    return conn.execute(query).scalar_one_or_none()


def dedupe_original(conn: Connection, key: str) -> tuple[int, JobState] | None:
    """The newest original (not itself a duplicate) with dedupe key ``key`` that ended
    SUCCEEDED or IRRECOVERABLE."""
    row = conn.execute(
        select(_J.id, _J.state)
        .where(
            _J.dedupe_key == key,
            _J.duplicate_of.is_(None),
            _J.state.in_([JobState.SUCCEEDED.value, JobState.IRRECOVERABLE.value]),
        )
        .order_by(_J.finished_at.desc(), _J.id.desc())
        .limit(1)
    ).first()
    return (row.id, JobState(row.state)) if row else None


def noticed_with_dedupe_key(conn: Connection, key: str) -> list[Job]:
    ids = conn.execute(
        select(_J.id)
        .where(_J.dedupe_key == key, _J.state == JobState.NOTICED.value)
        .order_by(_J.not_before, _J.id)
    ).scalars()
    found = get_jobs(conn, list(ids))
    return sorted(found.values(), key=lambda j: j.id)


def waiting_jobs_on(conn: Connection, subject: str, process: str, state: JobState) -> list[Job]:
    ids = conn.execute(
        select(_J.id).where(_J.subject == subject, _J.process == process, _J.state == state.value)
    ).scalars()
    return list(get_jobs(conn, list(ids)).values())


def expired_waiting_jobs(conn: Connection, now: datetime, limit: int) -> list[Job]:
    ids = conn.execute(
        select(_J.id)
        .where(
            _J.state.in_([JobState.NOTICED.value, JobState.QUEUED.value]),
            _J.expires_at.is_not(None),
            _J.expires_at <= now,
        )
        .limit(limit)
    ).scalars()
    return list(get_jobs(conn, list(ids)).values())


def overrun_executions(conn: Connection, now: datetime) -> list[tuple[int, int, int | None]]:
    """(job id, execution id, session id) of open executions past their deadline."""
    rows = conn.execute(
        select(_E.job_id, _E.id, _E.session_id).where(
            _E.finished_at.is_(None), _E.deadline_at.is_not(None), _E.deadline_at <= now
        )
    )
    return [(r.job_id, r.id, r.session_id) for r in rows]


def delete_finished_before(conn: Connection, cutoff: datetime, limit: int) -> int:
    """Delete up to ``limit`` terminal jobs that finished before ``cutoff``, with their
    executions, labels and events. Returns how many were deleted."""
    ids = list(
        conn.execute(
            select(_J.id)
            .where(_J.finished_at.is_not(None), _J.finished_at < cutoff)
            .order_by(_J.finished_at)
            .limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    # Duplicates keep their own status; the link to a forgotten original goes.
    conn.execute(update(jobs).where(_J.duplicate_of.in_(ids)).values(duplicate_of=None))
    for table in (job_events, job_labels, job_coalesce_keys, coalesce_holds, executions):
        conn.execute(delete(table).where(table.c.job_id.in_(ids)))
    conn.execute(delete(jobs).where(_J.id.in_(ids)))
    return len(ids)


def move(
    conn: Connection,
    job_id: int,
    transition: Transition,
    now: datetime,
    *,
    info: str | None = None,
    expected_execution_id: int | None = None,
    new_execution_id: int | None = None,
    count: str | None = None,
    not_before: datetime | None = None,
    duplicate_of: int | None = None,
) -> bool:
    """Apply ``transition`` to one job as a compare-and-set on its state (and, for moves
    that end an execution, on its current execution id). Returns whether it applied.
    ``count`` names a counter to add one to ("failures" or "losses")."""
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
    if count is not None:
        values[count] = _J[count] + 1
    if not_before is not None:
        values["not_before"] = not_before
    if duplicate_of is not None:
        values["duplicate_of"] = duplicate_of
    result = conn.execute(update(jobs).where(*conds).values(values))
    return result.rowcount == 1


_MOVE_CLAIMED = (
    update(jobs)
    .where(_J.id == bindparam("b_id"), _J.state == JobState.QUEUED.value)
    .values(
        state=JobState.BUILDING.value,
        current_execution_id=bindparam("b_execution_id"),
        attempt=_J.attempt + 1,
        info="",
        updated_at=bindparam("b_now"),
    )
)


def move_claimed(conn: Connection, claims: Sequence[tuple[int, int]], now: datetime) -> int:
    """QUEUED -> BUILDING for (job id, new execution id) pairs, as one executemany (on
    SQLite); the compare-and-set on QUEUED stays. Returns how many rows moved."""
    if conn.dialect.name == "sqlite":
        at = sqlite_time(now)
        return sqlite_execute_rows(
            conn, _SQLITE_MOVE_CLAIMED, [(e, at, job_id) for job_id, e in claims]
        )
    rows = [{"b_id": job_id, "b_execution_id": e, "b_now": now} for job_id, e in claims]
    return int(conn.execute(_MOVE_CLAIMED, rows).rowcount)


_SQLITE_MOVE_CLAIMED = (
    "UPDATE jobs SET state = 'BUILDING', current_execution_id = ?, attempt = attempt + 1, "
    "info = '', updated_at = ? WHERE id = ? AND state = 'QUEUED'"
)


@dataclass(frozen=True)
class NewExecution:
    """A QUEUED job bound to a runner session by a claim."""

    job_id: int
    number: int
    runner: str
    session_id: int
    deadline_at: datetime | None
    actor: str


_PG_CLAIM = text(
    """
    WITH claimed AS (
        SELECT * FROM unnest(
            CAST(:job_ids AS BIGINT[]), CAST(:numbers AS INTEGER[]),
            CAST(:runners AS VARCHAR[]), CAST(:session_ids AS BIGINT[]),
            CAST(:deadlines AS TIMESTAMP[]), CAST(:actors AS VARCHAR[])
        ) AS c(job_id, number, runner_name, session_id, deadline_at, actor)
    ), made AS (
        INSERT INTO executions (job_id, number, runner_name, session_id, started_at, result,
                                deadline_at)
        SELECT job_id, number, runner_name, session_id, :now, '', deadline_at FROM claimed
        RETURNING id, job_id
    ), moved AS (
        UPDATE jobs AS j
        SET state = 'BUILDING', current_execution_id = made.id, attempt = j.attempt + 1,
            info = '', updated_at = :now
        FROM made
        WHERE j.id = made.job_id AND j.state = 'QUEUED'
        RETURNING j.id
    ), logged AS (
        INSERT INTO job_events (job_id, execution_id, kind, from_state, to_state, actor,
                                cause, at)
        SELECT made.job_id, made.id, :kind, 'QUEUED', 'BUILDING', claimed.actor, '', :now
        FROM made JOIN claimed ON claimed.job_id = made.job_id
        ORDER BY made.id
    )
    SELECT made.id, made.job_id, (SELECT count(*) FROM moved) AS moved FROM made
    """
).bindparams(bindparam("now", type_=UtcDateTime()))


def claim_queued(
    conn: Connection, claims: Sequence[NewExecution], now: datetime, *, event: str
) -> list[int]:
    """Bind QUEUED jobs to runner sessions: an execution each, QUEUED -> BUILDING as a
    compare-and-set, and an ``event`` each; one statement on PostgreSQL. Returns the new
    execution ids in the order of ``claims``; raises when a job was not QUEUED (the
    caller holds the rows, so that is a bug, not a race)."""
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            _PG_CLAIM,
            {
                "now": now,
                "kind": event,
                "job_ids": [c.job_id for c in claims],
                "numbers": [c.number for c in claims],
                "runners": [c.runner for c in claims],
                "session_ids": [c.session_id for c in claims],
                "deadlines": [
                    c.deadline_at.astimezone(UTC).replace(tzinfo=None) if c.deadline_at else None
                    for c in claims
                ],
                "actors": [c.actor for c in claims],
            },
        ).all()
        moved = rows[0].moved if rows else 0
        by_job = {r.job_id: r.id for r in rows}
        execution_ids = [by_job[c.job_id] for c in claims]
    else:
        execution_ids = insert_executions(
            conn,
            [(c.job_id, c.number, c.runner, c.session_id, c.deadline_at) for c in claims],
            now,
        )
        moved = move_claimed(
            conn, list(zip([c.job_id for c in claims], execution_ids, strict=True)), now
        )
        event_store.insert_events(
            conn,
            [
                {
                    "job_id": c.job_id,
                    "execution_id": execution_id,
                    "kind": event,
                    "from_state": JobState.QUEUED.value,
                    "to_state": JobState.BUILDING.value,
                    "actor": c.actor,
                    "cause": "",
                    "at": now,
                }
                for c, execution_id in zip(claims, execution_ids, strict=True)
            ],
        )
    if moved != len(claims):
        raise RuntimeError(f"{len(claims) - moved} job(s) changed under a claim lock")
    return execution_ids


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


def overdue_cancels(conn: Connection, cutoff: datetime) -> list[tuple[int, int]]:
    """(job id, execution id) of BUILDING jobs whose cancel was asked before ``cutoff``."""
    rows = conn.execute(
        select(_J.id, _J.current_execution_id).where(
            _J.state == JobState.BUILDING.value, _J.cancel_requested_at < cutoff
        )
    )
    return [(r.id, r.current_execution_id) for r in rows]


def make_due(conn: Connection, job_id: int, now: datetime) -> bool:
    """Bring a NOTICED job's due time forward to ``now`` ("run now")."""
    res = conn.execute(
        update(jobs)
        .where(_J.id == job_id, _J.state == JobState.NOTICED.value, _J.not_before > now)
        .values(not_before=now, updated_at=now)
    )
    return res.rowcount == 1
