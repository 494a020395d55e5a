"""Checks on what clients send, with messages that name the field and the limit."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dispatcher.domain.errors import InvalidInput, LimitExceeded
from dispatcher.domain.model import JobSpec, RunnerHello

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


def _refuse_unsupported(spec: JobSpec) -> None:
    # Accepting these and ignoring them would be worse than refusing them: a submitter
    # relying on a coalesce key would get two builds at once. They arrive with the
    # scheduling rules (SPEC §5.4, §5.5) and distributor adapters (SPEC §7).
    unsupported = [
        name
        for name, given in (
            ("coalesce_keys", bool(spec.coalesce_keys)),
            ("dedupe_key", bool(spec.dedupe_key)),
            ("origin_time", spec.origin_time is not None),
            ("distributor", spec.distributor not in ("", RUNNER_POOL)),
        )
        if given
    ]
    if unsupported:
        raise InvalidInput(
            f"spec.{unsupported[0]} is not supported by this dispatcher yet; leave it empty"
        )


def check_spec(spec: JobSpec, limits: Limits) -> None:
    """Raise InvalidInput/LimitExceeded when ``spec`` cannot be accepted."""
    _refuse_unsupported(spec)
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
    ):
        if len(text) > limits.max_label_length:
            raise LimitExceeded(f"{what} is longer than {limits.max_label_length} characters")


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
