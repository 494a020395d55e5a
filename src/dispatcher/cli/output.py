"""What the CLI prints: aligned tables and key/value blocks for people, JSON for scripts.

Every function here returns text; commands decide where it goes. Enum values are shown
by their proto name without the type prefix (``QUEUED``, ``REQUEUE_UNTIL_COMMITTED``).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher.v1 import admin_pb2, types_pb2

COMMAND_WIDTH = 48
NONE = "-"


# --- Building blocks ----------------------------------------------------------------------


def to_json(message: Message) -> str:
    """The message as JSON: field names as in the .proto, and every field present (empty
    lists, zeros) so that scripts can rely on the keys."""
    as_dict = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(as_dict, indent=2)


def enum_prefix(descriptor: EnumDescriptor) -> str:
    """``JOB_STATE_`` for JobState: what its zero value's name has before UNSPECIFIED."""
    return descriptor.values_by_number[0].name.removesuffix("UNSPECIFIED")


def enum_label(descriptor: EnumDescriptor, number: int) -> str:
    """``QUEUED`` for JOB_STATE_QUEUED; ``-`` for the zero value; the number if unknown."""
    if number == 0:
        return NONE
    value = descriptor.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(enum_prefix(descriptor))


def state_label(state: int) -> str:
    return enum_label(types_pb2.JobState.DESCRIPTOR, state)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    lines = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    return "\n".join(
        "  ".join(
            [cell.ljust(width) for cell, width in zip(line[:-1], widths, strict=False)] + [line[-1]]
        ).rstrip()
        for line in lines
    )


def fields(pairs: Iterable[tuple[str, str]], indent: str = "  ") -> str:
    """``key  value`` lines with the values aligned."""
    pairs = list(pairs)
    width = max((len(key) for key, _ in pairs), default=0)
    return "\n".join(f"{indent}{key.ljust(width)}  {value}".rstrip() for key, value in pairs)


def timestamp(ts: Timestamp | None) -> str:
    """``2024-05-01 12:00:03Z``, or ``-`` when unset."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return NONE
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def span(delta: timedelta) -> str:
    """A short rough length of time: ``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(int(delta.total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def age(ts: Timestamp, now: datetime) -> str:
    if ts.seconds == 0 and ts.nanos == 0:
        return NONE
    return span(now - ts.ToDatetime(tzinfo=UTC))


def command_line(command: Iterable[str], width: int | None = None) -> str:
    text = shlex.join(command) or NONE
    if width is not None and len(text) > width:
        return text[: width - 1] + "…"
    return text


def _or_none(value: object) -> str:
    return str(value) if value not in ("", None) else NONE


# --- Jobs -----------------------------------------------------------------------------------


def job_line(job: types_pb2.Job) -> str:
    """``job 12 QUEUED`` or ``job 12 FAILED: exit status 2``."""
    line = f"job {job.id} {state_label(job.state)}"
    return f"{line}: {job.info}" if job.info else line


def job_table(jobs: Iterable[types_pb2.Job], now: datetime) -> str:
    headers = ("ID", "STATE", "QUEUE", "PLATFORM", "RUNNER", "ATTEMPT", "AGE", "COMMAND")
    rows = (
        (
            str(job.id),
            state_label(job.state),
            _or_none(job.spec.queue),
            _or_none(job.spec.platform),
            _or_none(job.runner),
            str(job.attempt),
            age(job.created_at, now),
            command_line(job.spec.command, COMMAND_WIDTH),
        )
        for job in jobs
    )
    return table(headers, rows)


def job_detail(job: types_pb2.Job) -> str:
    spec = job.spec
    on_lost = types_pb2.OnLostPolicy.DESCRIPTOR
    about: list[tuple[str, str]] = [
        ("state", state_label(job.state)),
        ("info", _or_none(job.info)),
        ("queue", _or_none(spec.queue)),
        ("platform", _or_none(spec.platform)),
        ("labels", ", ".join(spec.labels) or NONE),
        ("priority", str(spec.priority)),
        ("command", command_line(spec.command)),
        ("on lost", enum_label(on_lost, spec.on_lost)),
        ("attempt", str(job.attempt)),
        ("runner", _or_none(job.runner)),
        ("created", timestamp(job.created_at)),
        ("updated", timestamp(job.updated_at)),
        ("finished", timestamp(job.finished_at)),
    ]
    optional = [
        ("not before", timestamp(spec.not_before) if spec.HasField("not_before") else ""),
        ("idempotency key", spec.idempotency_key),
        ("dedupe key", spec.dedupe_key),
        ("coalesce keys", ", ".join(spec.coalesce_keys)),
        ("distributor", spec.distributor),
        ("duplicate of", str(job.duplicate_of) if job.duplicate_of else ""),
        ("flavor", job.flavor),
        ("schedule", job.schedule),
        ("subject", f"{spec.subject}/{spec.process}" if spec.subject else ""),
        ("failures", f"{job.failures} of {spec.retry.max_attempts or 1}" if job.failures else ""),
        ("losses", str(job.losses) if job.losses else ""),
        ("payload", f"{len(spec.payload)} bytes" if spec.payload else ""),
    ]
    about += [(key, value) for key, value in optional if value]
    parts = [f"job {job.id}", fields(about)]
    if job.executions:
        parts += ["executions:", _indent(executions_table(job.executions))]
    if job.events:
        parts += ["events:", _indent(events_table(job.events))]
    last = _last_logtail(job.executions)
    if last is not None:
        parts += [f"logtail (execution {last.number}):", _indent(last.logtail.rstrip("\n"))]
    return "\n".join(parts)


def executions_table(executions: Iterable[types_pb2.Execution]) -> str:
    outcome = types_pb2.Outcome.DESCRIPTOR
    headers = ("#", "RUNNER", "OUTCOME", "STARTED", "FINISHED", "INFO")
    rows = (
        (
            str(e.number),
            _or_none(e.runner),
            enum_label(outcome, e.outcome),
            timestamp(e.started_at),
            timestamp(e.finished_at),
            _or_none(e.info),
        )
        for e in executions
    )
    return table(headers, rows)


def events_table(events: Iterable[types_pb2.JobEvent]) -> str:
    headers = ("TIME", "KIND", "FROM→TO", "ACTOR", "CAUSE")
    rows = (
        (
            timestamp(e.at),
            e.kind,
            f"{state_label(e.from_state)}→{state_label(e.to_state)}",
            _or_none(e.actor),
            _or_none(e.cause),
        )
        for e in events
    )
    return table(headers, rows)


def _last_logtail(executions: Sequence[types_pb2.Execution]) -> types_pb2.Execution | None:
    with_logs = [e for e in executions if e.logtail]
    return max(with_logs, key=lambda e: e.number) if with_logs else None


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line if line else line for line in text.splitlines())


# --- Runners and the server -----------------------------------------------------------------


def runner_table(runners: Iterable[types_pb2.Runner], now: datetime) -> str:
    state = types_pb2.RunnerState.DESCRIPTOR
    headers = ("NAME", "STATE", "PLATFORM", "LABELS", "CAPACITY", "BUILDING", "LAST SEEN")
    rows = (
        (
            r.name,
            enum_label(state, r.state),
            _or_none(r.platform),
            ",".join(r.labels) or NONE,
            str(r.capacity),
            str(r.building),
            _ago(r.last_seen_at, now),
        )
        for r in runners
    )
    return table(headers, rows)


def _ago(ts: Timestamp, now: datetime) -> str:
    text = age(ts, now)
    return text if text == NONE else f"{text} ago"


def server_info(info: admin_pb2.GetServerInfoResponse) -> str:
    return fields(
        [
            ("version", _or_none(info.version)),
            ("database", _or_none(info.database)),
            ("replica", _or_none(info.replica_id)),
            ("started", timestamp(info.started_at)),
            ("uptime", span(info.uptime.ToTimedelta())),
            ("live replicas", f"{info.live_replicas} ({', '.join(r.id for r in info.replicas)})"),
            ("max batch", str(info.max_batch_size)),
        ],
        indent="",
    )
