"""Proto messages <-> domain values. Enum numbers live only here: the database stores
names, and an unknown number from a client is an INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher.domain.errors import InvalidInput
from dispatcher.domain.model import (
    DEFAULT_RETRY,
    Backoff,
    Execution,
    Explanation,
    Flavor,
    Job,
    JobEvent,
    JobFilter,
    JobSpec,
    Pressure,
    Replica,
    RetryPolicy,
    Runner,
    RunnerHello,
    RunnerState,
    Schedule,
    ScheduleSpec,
    ScheduleState,
)
from dispatcher.domain.states import DEFAULT_ON_LOST, JobState, OnLostPolicy, Outcome
from dispatcher.domain.tokens import Role, Token
from dispatcher.v1 import admin_pb2, scheduler_pb2, types_pb2

E = TypeVar("E")

_JOB_STATE = {
    types_pb2.JOB_STATE_NOTICED: JobState.NOTICED,
    types_pb2.JOB_STATE_QUEUED: JobState.QUEUED,
    types_pb2.JOB_STATE_BUILDING: JobState.BUILDING,
    types_pb2.JOB_STATE_SUCCEEDED: JobState.SUCCEEDED,
    types_pb2.JOB_STATE_FAILED: JobState.FAILED,
    types_pb2.JOB_STATE_IRRECOVERABLE: JobState.IRRECOVERABLE,
    types_pb2.JOB_STATE_CANCELLED: JobState.CANCELLED,
    types_pb2.JOB_STATE_NOT_FOR_US: JobState.NOT_FOR_US,
}
_JOB_STATE_PB = {v: k for k, v in _JOB_STATE.items()}

_ON_LOST = {
    types_pb2.ON_LOST_POLICY_REQUEUE: OnLostPolicy.REQUEUE,
    types_pb2.ON_LOST_POLICY_IRRECOVERABLE: OnLostPolicy.IRRECOVERABLE,
    types_pb2.ON_LOST_POLICY_REQUEUE_UNTIL_COMMITTED: OnLostPolicy.REQUEUE_UNTIL_COMMITTED,
}
_ON_LOST_PB = {v: k for k, v in _ON_LOST.items()}

_OUTCOME = {
    types_pb2.OUTCOME_SUCCEEDED: Outcome.SUCCEEDED,
    types_pb2.OUTCOME_FAILED: Outcome.FAILED,
    types_pb2.OUTCOME_IRRECOVERABLE: Outcome.IRRECOVERABLE,
    types_pb2.OUTCOME_CANCELLED: Outcome.CANCELLED,
    types_pb2.OUTCOME_LOST: Outcome.LOST,
}
_OUTCOME_PB = {v: k for k, v in _OUTCOME.items()}

_ROLE = {
    admin_pb2.TOKEN_ROLE_RUNNER: Role.RUNNER,
    admin_pb2.TOKEN_ROLE_DISTRIBUTOR: Role.DISTRIBUTOR,
    admin_pb2.TOKEN_ROLE_ADMIN: Role.ADMIN,
}
_ROLE_PB = {v: k for k, v in _ROLE.items()}

_RUNNER_STATE_PB = {
    RunnerState.ONLINE: types_pb2.RUNNER_STATE_ONLINE,
    RunnerState.DRAINING: types_pb2.RUNNER_STATE_DRAINING,
    RunnerState.OFFLINE: types_pb2.RUNNER_STATE_OFFLINE,
}


def _enum(table: Mapping[Any, E], value: int, field: str, enum_name: str) -> E:
    try:
        return table[value]
    except KeyError:
        names = ", ".join(
            types_pb2.DESCRIPTOR.enum_types_by_name[enum_name].values_by_number[n].name
            for n in sorted(table)
        )
        raise InvalidInput(f"{field}: unknown value {value}; use one of {names}") from None


def _time(ts: Timestamp, *, present: bool, field: str) -> datetime | None:
    if not present:
        return None
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidInput(
            f"{field}: not a valid time (seconds {ts.seconds}, nanos {ts.nanos}); "
            "use years 1 to 9999"
        ) from None


def _duration(value: Duration, *, present: bool, field: str) -> timedelta | None:
    if not present:
        return None
    try:
        return value.ToTimedelta()
    except (OverflowError, ValueError):
        raise InvalidInput(f"{field} is out of range") from None


# Every job sent out carries several times and durations: these build them from whole
# seconds and microseconds, as FromDatetime/FromTimedelta do, without their generic
# (and slow) normalising code.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _set_ts(field: Timestamp, value: datetime) -> None:
    since = value - _EPOCH if value.tzinfo is not None else value - _EPOCH.replace(tzinfo=None)
    field.seconds = since.days * 86_400 + since.seconds
    field.nanos = since.microseconds * 1000


def _set_dur(field: Duration, value: timedelta) -> None:
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    seconds, rest = divmod(abs(micros), 1_000_000)
    sign = -1 if micros < 0 else 1  # seconds and nanos share the sign of the duration
    field.seconds = sign * seconds
    field.nanos = sign * rest * 1000


def _ts(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    _set_ts(out, value)
    return out


def _dur(value: timedelta | None) -> Duration | None:
    if value is None:
        return None
    out = Duration()
    _set_dur(out, value)
    return out


# --- to the domain ----------------------------------------------------------------


def spec_from_proto(spec: types_pb2.JobSpec) -> JobSpec:
    on_lost = (
        DEFAULT_ON_LOST
        if spec.on_lost == types_pb2.ON_LOST_POLICY_UNSPECIFIED
        else _enum(_ON_LOST, spec.on_lost, "spec.on_lost", "OnLostPolicy")
    )
    return JobSpec(
        platform=spec.platform,
        command=tuple(spec.command),
        queue=spec.queue,
        labels=frozenset(spec.labels),
        payload=spec.payload,
        priority=spec.priority,
        not_before=_time(
            spec.not_before, present=spec.HasField("not_before"), field="spec.not_before"
        ),
        coalesce_keys=frozenset(spec.coalesce_keys),
        dedupe_key=spec.dedupe_key,
        idempotency_key=spec.idempotency_key,
        origin_time=_time(
            spec.origin_time, present=spec.HasField("origin_time"), field="spec.origin_time"
        ),
        distributor=spec.distributor,
        on_lost=on_lost,
        retry=_retry_from_proto(spec.retry) if spec.HasField("retry") else DEFAULT_RETRY,
        subject=spec.subject,
        process=spec.process,
        failure_backoff=_duration(
            spec.failure_backoff,
            present=spec.HasField("failure_backoff"),
            field="spec.failure_backoff",
        ),
        max_wait=_duration(spec.max_wait, present=spec.HasField("max_wait"), field="spec.max_wait"),
        max_run=_duration(spec.max_run, present=spec.HasField("max_run"), field="spec.max_run"),
    )


def _retry_from_proto(retry: types_pb2.RetryPolicy) -> RetryPolicy:
    # Zero and unset mean "the default", so a client names only what it changes.
    initial = _duration(
        retry.initial_delay,
        present=retry.HasField("initial_delay"),
        field="spec.retry.initial_delay",
    )
    maximum = _duration(
        retry.max_delay, present=retry.HasField("max_delay"), field="spec.retry.max_delay"
    )
    return RetryPolicy(
        max_attempts=retry.max_attempts or DEFAULT_RETRY.max_attempts,
        initial_delay=DEFAULT_RETRY.initial_delay if initial is None else initial,
        multiplier=retry.multiplier or DEFAULT_RETRY.multiplier,
        max_delay=DEFAULT_RETRY.max_delay if maximum is None else maximum,
        max_lost=retry.max_lost or DEFAULT_RETRY.max_lost,
    )


def flavor_from_proto(flavor: types_pb2.Flavor) -> Flavor:
    return Flavor(
        name=flavor.name,
        platform=flavor.platform,
        labels=frozenset(flavor.labels),
        priority=flavor.priority,
        enabled=flavor.enabled,
        min_pressure=flavor.min_pressure,
    )


def schedule_from_proto(request: admin_pb2.CreateScheduleRequest) -> ScheduleSpec:
    interval = _duration(request.interval, present=request.HasField("interval"), field="interval")
    if interval is None:
        raise InvalidInput("interval is required: how often the job runs")
    return ScheduleSpec(
        name=request.name,
        job=spec_from_proto(request.job),
        interval=interval,
        max_failures=request.max_failures or 5,
    )


def filter_from_proto(request: admin_pb2.ListJobsRequest) -> JobFilter:
    return JobFilter(
        states=frozenset(_enum(_JOB_STATE, s, "states", "JobState") for s in request.states),
        queue=request.queue,
        platform=request.platform,
        labels=frozenset(request.labels),
        runner=request.runner,
        flavor=request.flavor,
        created_after=_time(
            request.created_after,
            present=request.HasField("created_after"),
            field="created_after",
        ),
        created_before=_time(
            request.created_before,
            present=request.HasField("created_before"),
            field="created_before",
        ),
    )


def hello_from_proto(hello: scheduler_pb2.Hello) -> RunnerHello:
    return RunnerHello(
        name=hello.name,
        platform=hello.platform,
        labels=frozenset(hello.labels),
        capacity=hello.capacity,
        version=hello.version,
        resume_token=hello.resume_token,
    )


def role_from_proto(value: int) -> Role:
    try:
        return _ROLE[value]  # type: ignore[index]
    except KeyError:
        names = ", ".join(admin_pb2.TokenRole.Name(n) for n in sorted(_ROLE))
        raise InvalidInput(f"role: unknown value {value}; use one of {names}") from None


def outcome_from_proto(value: int) -> Outcome:
    return _enum(_OUTCOME, value, "result.outcome", "Outcome")


# --- to the wire ------------------------------------------------------------------


def spec_to_proto(spec: JobSpec) -> types_pb2.JobSpec:
    out = types_pb2.JobSpec()
    _fill_spec(out, spec)
    return out


def _fill_spec(out: types_pb2.JobSpec, spec: JobSpec) -> None:
    # Field by field, defaults left unset: every submitted and every assigned job passes
    # here, and keyword construction with nested messages cost four times as much.
    if spec.queue:
        out.queue = spec.queue
    out.platform = spec.platform
    if spec.labels:
        out.labels.extend(sorted(spec.labels))
    out.command.extend(spec.command)
    if spec.payload:
        out.payload = spec.payload
    if spec.priority:
        out.priority = spec.priority
    if spec.not_before is not None:
        _set_ts(out.not_before, spec.not_before)
    if spec.coalesce_keys:
        out.coalesce_keys.extend(sorted(spec.coalesce_keys))
    if spec.dedupe_key:
        out.dedupe_key = spec.dedupe_key
    if spec.idempotency_key:
        out.idempotency_key = spec.idempotency_key
    if spec.origin_time is not None:
        _set_ts(out.origin_time, spec.origin_time)
    if spec.distributor:
        out.distributor = spec.distributor
    out.on_lost = _ON_LOST_PB[spec.on_lost]
    policy, retry = spec.retry, out.retry
    retry.max_attempts = policy.max_attempts
    _set_dur(retry.initial_delay, policy.initial_delay)
    retry.multiplier = policy.multiplier
    _set_dur(retry.max_delay, policy.max_delay)
    retry.max_lost = policy.max_lost
    if spec.subject:
        out.subject = spec.subject
    if spec.process:
        out.process = spec.process
    if spec.failure_backoff is not None:
        _set_dur(out.failure_backoff, spec.failure_backoff)
    if spec.max_wait is not None:
        _set_dur(out.max_wait, spec.max_wait)
    if spec.max_run is not None:
        _set_dur(out.max_run, spec.max_run)


def job_to_proto(job: Job) -> types_pb2.Job:
    out = types_pb2.Job()
    fill_job(out, job)
    return out


def fill_job(out: types_pb2.Job, job: Job) -> None:
    """Write ``job`` into ``out``, a message of its own or a field of another: a message
    given to a constructor is copied, and every Assign carries a job."""
    out.id = job.id
    out.state = _JOB_STATE_PB[job.state]
    if job.attempt:
        out.attempt = job.attempt
    _fill_spec(out.spec, job.spec)
    if job.info:
        out.info = job.info
    if job.current_execution_id:
        out.current_execution_id = job.current_execution_id
    if job.duplicate_of:
        out.duplicate_of = job.duplicate_of
    if job.created_at is not None:
        _set_ts(out.created_at, job.created_at)
    if job.updated_at is not None:
        _set_ts(out.updated_at, job.updated_at)
    if job.finished_at is not None:
        _set_ts(out.finished_at, job.finished_at)
    if job.executions:
        out.executions.extend(execution_to_proto(e) for e in job.executions)
    if job.events:
        out.events.extend(event_to_proto(e) for e in job.events)
    if job.runner:
        out.runner = job.runner
    if job.flavor:
        out.flavor = job.flavor
    if job.schedule:
        out.schedule = job.schedule
    if job.failures:
        out.failures = job.failures
    if job.losses:
        out.losses = job.losses
    if job.raw:
        out.raw.update(dict(job.raw))


def execution_to_proto(execution: Execution) -> types_pb2.Execution:
    return types_pb2.Execution(
        id=execution.id,
        job_id=execution.job_id,
        number=execution.number,
        runner=execution.runner,
        session_id=execution.session_id or 0,
        started_at=_ts(execution.started_at),
        last_heartbeat_at=_ts(execution.last_heartbeat_at),
        committed_at=_ts(execution.committed_at),
        finished_at=_ts(execution.finished_at),
        outcome=_OUTCOME_PB[execution.outcome]
        if execution.outcome
        else types_pb2.OUTCOME_UNSPECIFIED,
        info=execution.info,
        logtail=execution.logtail,
        result=execution.result,
        distributor=execution.distributor,
        info_url=execution.info_url,
    )


def event_to_proto(event: JobEvent) -> types_pb2.JobEvent:
    return types_pb2.JobEvent(
        id=event.id,
        job_id=event.job_id,
        execution_id=event.execution_id or 0,
        kind=event.kind,
        from_state=_state_pb(event.from_state),
        to_state=_state_pb(event.to_state),
        actor=event.actor,
        cause=event.cause,
        at=_ts(event.at),
    )


def _state_pb(state: JobState | None) -> types_pb2.JobState.ValueType:
    return _JOB_STATE_PB[state] if state else types_pb2.JOB_STATE_UNSPECIFIED


def runner_to_proto(runner: Runner) -> types_pb2.Runner:
    return types_pb2.Runner(
        name=runner.name,
        platform=runner.platform,
        labels=sorted(runner.labels),
        capacity=runner.capacity,
        state=_RUNNER_STATE_PB[runner.state],
        version=runner.version,
        last_seen_at=_ts(runner.last_seen_at),
        building=runner.building,
        quarantined_until=_ts(runner.quarantined_until),
    )


def flavor_to_proto(flavor: Flavor) -> types_pb2.Flavor:
    return types_pb2.Flavor(
        name=flavor.name,
        platform=flavor.platform,
        labels=sorted(flavor.labels),
        priority=flavor.priority,
        enabled=flavor.enabled,
        min_pressure=flavor.min_pressure,
    )


def pressure_to_proto(pressure: Pressure) -> types_pb2.Pressure:
    return types_pb2.Pressure(
        flavor=pressure.flavor,
        platform=pressure.platform,
        value=pressure.value,
        unfinished=pressure.unfinished,
        enabled=pressure.enabled,
    )


_SCHEDULE_STATE_PB = {
    ScheduleState.ACTIVE: types_pb2.SCHEDULE_STATE_ACTIVE,
    ScheduleState.PAUSED: types_pb2.SCHEDULE_STATE_PAUSED,
    ScheduleState.SUSPENDED: types_pb2.SCHEDULE_STATE_SUSPENDED,
}


def schedule_to_proto(schedule: Schedule) -> types_pb2.Schedule:
    return types_pb2.Schedule(
        name=schedule.spec.name,
        job=spec_to_proto(schedule.spec.job),
        interval=_dur(schedule.spec.interval),
        max_failures=schedule.spec.max_failures,
        state=_SCHEDULE_STATE_PB[schedule.state],
        consecutive_failures=schedule.consecutive_failures,
        next_due_at=_ts(schedule.next_due_at),
        last_started_at=_ts(schedule.last_started_at),
        pending_job_id=schedule.pending_job_id or 0,
    )


def backoff_to_proto(backoff: Backoff) -> types_pb2.Backoff:
    return types_pb2.Backoff(
        subject=backoff.subject,
        process=backoff.process,
        until=_ts(backoff.until),
        cause=backoff.cause,
        job_id=backoff.job_id or 0,
    )


def explanation_to_proto(explanation: Explanation) -> admin_pb2.ExplainJobResponse:
    return admin_pb2.ExplainJobResponse(
        id=explanation.job_id,
        state=_JOB_STATE_PB[explanation.state],
        reasons=[
            types_pb2.Reason(
                code=r.code,
                text=r.text,
                until=_ts(r.until),
                blocking_job_id=r.blocking_job_id or 0,
            )
            for r in explanation.reasons
        ],
    )


def token_to_proto(token: Token) -> admin_pb2.Token:
    return admin_pb2.Token(
        id=token.id,
        name=token.name,
        role=_ROLE_PB[token.role],
        created_at=_ts(token.created_at),
        last_used_at=_ts(token.last_used_at),
    )


# --- watch, replicas ----------------------------------------------------------------


def states_from_proto(values: Iterable[int], field: str) -> frozenset[JobState]:
    return frozenset(_enum(_JOB_STATE, s, field, "JobState") for s in values)


def replica_to_proto(replica: Replica) -> admin_pb2.Replica:
    return admin_pb2.Replica(
        id=replica.id,
        version=replica.version,
        started_at=_ts(replica.started_at),
        lease_until=_ts(replica.lease_until),
    )
