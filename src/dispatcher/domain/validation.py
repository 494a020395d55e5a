"""Checks on what clients send, with messages that name the field and the limit."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta

from dispatcher.domain.errors import InvalidInput, LimitExceeded
from dispatcher.domain.model import Flavor, JobSpec, RetryPolicy, RunnerHello, ScheduleSpec

# The one distributor there is: the pool of runners holding Connect streams.
RUNNER_POOL = "runners"

# A label or platform: printable, no spaces or commas, so that it reads the same in
# a CLI flag, a URL and a log line.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/=+-]*$")


@dataclass(frozen=True)
class Limits:
    max_labels: int = 64
    max_label_length: int = 128
    max_command_args: int = 4096
    max_command_bytes: int = 256 * 1024
    max_payload_bytes: int = 1024 * 1024
    max_batch_size: int = 1000
    max_capacity: int = 1024
    # The configured distributor instances (SPEC §7) a job may name, besides the pool.
    distributors: frozenset[str] = frozenset()


def _check_name(value: str, what: str, limits: Limits) -> None:
    if len(value) > limits.max_label_length:
        raise LimitExceeded(
            f"{what}: {value[:40]!r}... is longer than the limit of {limits.max_label_length}"
        )
    if not _NAME.match(value):
        raise InvalidInput(
            f"{what}: {value!r} is not valid: use letters, digits and . _ : / = + -, "
            "starting with a letter or digit"
        )


def _check_labels(labels: frozenset[str], what: str, limits: Limits) -> None:
    if len(labels) > limits.max_labels:
        raise LimitExceeded(
            f"{what}: {len(labels)} labels, more than the limit of {limits.max_labels}"
        )
    for label in sorted(labels):
        _check_name(label, what, limits)


def _refuse_unsupported(spec: JobSpec, limits: Limits) -> None:
    # Accepting a distributor name nobody configured would leave the job waiting forever.
    if spec.distributor not in ("", RUNNER_POOL, *limits.distributors):
        known = ", ".join(repr(d) for d in sorted({RUNNER_POOL, *limits.distributors}))
        raise InvalidInput(
            f"spec.distributor {spec.distributor!r} does not exist; configured: {known} "
            "(empty: the runner pool)"
        )


MAX_DURATION = timedelta(days=366)


def _check_duration(value: timedelta | None, what: str, *, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < timedelta(0) or (value == timedelta(0) and not allow_zero):
        raise InvalidInput(f"{what} must be positive, not {value.total_seconds()} s")
    if value > MAX_DURATION:
        raise InvalidInput(f"{what} must be at most {MAX_DURATION.days} days")


def _check_retry(policy: RetryPolicy) -> None:
    if not 1 <= policy.max_attempts <= 1000:
        raise InvalidInput(
            f"spec.retry.max_attempts must be between 1 and 1000, not {policy.max_attempts}"
        )
    if not 0 <= policy.max_lost <= 1000:
        raise InvalidInput(f"spec.retry.max_lost must be between 0 and 1000, not {policy.max_lost}")
    if not 1.0 <= policy.multiplier <= 100.0:
        raise InvalidInput(
            f"spec.retry.multiplier must be between 1 and 100, not {policy.multiplier}"
        )
    _check_duration(policy.initial_delay, "spec.retry.initial_delay", allow_zero=True)
    _check_duration(policy.max_delay, "spec.retry.max_delay", allow_zero=True)
    if policy.max_delay < policy.initial_delay:
        raise InvalidInput("spec.retry.max_delay must not be shorter than initial_delay")


def check_spec(spec: JobSpec, limits: Limits) -> None:
    """Raise InvalidInput/LimitExceeded when ``spec`` cannot be accepted."""
    _refuse_unsupported(spec, limits)
    if not spec.platform:
        raise InvalidInput("spec.platform is required (for example 'linux/x86_64')")
    _check_name(spec.platform, "spec.platform", limits)
    _check_labels(spec.labels, "spec.labels", limits)
    if not spec.command and not spec.payload and not spec.distributor:
        raise InvalidInput("spec.command is required: the command line the runner executes")
    if len(spec.command) > limits.max_command_args:
        raise LimitExceeded(f"spec.command has more than {limits.max_command_args} arguments")
    if sum(len(a.encode()) for a in spec.command) > limits.max_command_bytes:
        raise LimitExceeded(f"spec.command is longer than {limits.max_command_bytes} bytes")
    if spec.command and not spec.command[0]:
        raise InvalidInput("spec.command[0] (the program) must not be empty")
    if len(spec.payload) > limits.max_payload_bytes:
        raise LimitExceeded(
            f"spec.payload is larger than the limit of {limits.max_payload_bytes} bytes"
        )
    for text, what in (
        (spec.queue, "spec.queue"),
        (spec.dedupe_key, "spec.dedupe_key"),
        (spec.idempotency_key, "spec.idempotency_key"),
        (spec.subject, "spec.subject"),
        (spec.process, "spec.process"),
        *((key, "spec.coalesce_keys") for key in spec.coalesce_keys),
    ):
        if len(text) > limits.max_label_length:
            raise LimitExceeded(f"{what} is longer than {limits.max_label_length} characters")
    if len(spec.coalesce_keys) > limits.max_labels:
        raise LimitExceeded(
            f"spec.coalesce_keys: {len(spec.coalesce_keys)} keys, more than the limit of "
            f"{limits.max_labels}"
        )
    if any(not key for key in spec.coalesce_keys):
        raise InvalidInput("spec.coalesce_keys must not contain an empty key")
    if spec.failure_backoff is not None and not spec.subject:
        raise InvalidInput("spec.failure_backoff needs spec.subject: the thing to back off")
    _check_retry(spec.retry)
    _check_duration(spec.failure_backoff, "spec.failure_backoff")
    _check_duration(spec.max_wait, "spec.max_wait")
    _check_duration(spec.max_run, "spec.max_run")


def check_flavor(flavor: Flavor, limits: Limits) -> None:
    if not flavor.name:
        raise InvalidInput("flavor.name is required")
    _check_name(flavor.name, "flavor.name", limits)
    if not flavor.platform:
        raise InvalidInput("flavor.platform is required (for example 'linux/x86_64')")
    _check_name(flavor.platform, "flavor.platform", limits)
    _check_labels(flavor.labels, "flavor.labels", limits)
    if not 0 <= flavor.min_pressure <= 1_000_000:
        raise InvalidInput(
            f"flavor.min_pressure must be between 0 and 1000000, not {flavor.min_pressure}"
        )


def check_schedule(schedule: ScheduleSpec, limits: Limits) -> None:
    if not schedule.name:
        raise InvalidInput("schedule.name is required")
    _check_name(schedule.name, "schedule.name", limits)
    if schedule.interval < timedelta(seconds=1):
        raise InvalidInput("schedule.interval must be at least 1 second")
    _check_duration(schedule.interval, "schedule.interval")
    if not 1 <= schedule.max_failures <= 1000:
        raise InvalidInput(
            f"schedule.max_failures must be between 1 and 1000, not {schedule.max_failures}"
        )
    if schedule.job.idempotency_key:
        raise InvalidInput("schedule.job.idempotency_key must be empty: every run is a new job")
    check_spec(schedule.job, limits)


def check_hello(hello: RunnerHello, limits: Limits) -> None:
    if not hello.name:
        raise InvalidInput("hello.name is required: a name unique to this build machine")
    _check_name(hello.name, "hello.name", limits)
    if not hello.platform:
        raise InvalidInput("hello.platform is required (for example 'linux/x86_64')")
    _check_name(hello.platform, "hello.platform", limits)
    _check_labels(hello.labels, "hello.labels", limits)
    if not 1 <= hello.capacity <= limits.max_capacity:
        raise InvalidInput(
            f"hello.capacity must be between 1 and {limits.max_capacity}, not {hello.capacity}"
        )
