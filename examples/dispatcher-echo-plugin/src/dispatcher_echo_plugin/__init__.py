"""The "echo" distributor: a task that ends after ``delay_seconds`` with the job's
payload as its result; a payload of ``fail`` makes it fail, and ``wait`` makes it run
until cancelled. It never pushes: the dispatcher learns the outcome by polling."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta

from dispatcher.distributors.contract import (
    IGNORE,
    RUNNING,
    BackendStatus,
    Config,
    ExecutionTicket,
    Host,
    Ignore,
    InvalidConfig,
    PermanentError,
)
from dispatcher.domain.model import Job
from dispatcher.domain.states import Outcome


class EchoDistributor:
    @staticmethod
    def validate(config: Config) -> None:
        unknown = set(config) - {"delay_seconds"}
        if unknown:
            raise InvalidConfig(f"unknown key(s) {', '.join(sorted(unknown))}")
        delay = config.get("delay_seconds", 0.0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise InvalidConfig(f"delay_seconds must be a number >= 0, not {delay!r}")

    def __init__(self, name: str, config: Config, host: Host) -> None:
        self._delay = float(config.get("delay_seconds", 0.0))
        # token -> (monotonic time it ends, payload, cancelled)
        self._tasks: dict[str, tuple[float, bytes, bool]] = {}

    async def run(self, job: Job, execution: ExecutionTicket) -> tuple[str, timedelta]:
        token = f"echo-{execution.id}"
        self._tasks.setdefault(token, (time.monotonic() + self._delay, job.spec.payload, False))
        return token, timedelta(seconds=self._delay)

    async def cancel(self, token: str) -> None:
        if token in self._tasks:
            ends, payload, _ = self._tasks[token]
            self._tasks[token] = (ends, payload, True)

    async def get_status(self, token: str) -> BackendStatus:
        if token not in self._tasks:
            raise PermanentError(f"echo knows no task {token}")
        ends, payload, cancelled = self._tasks[token]
        if cancelled:
            return BackendStatus(Outcome.CANCELLED, "cancelled")
        if time.monotonic() < ends or payload == b"wait":
            return RUNNING
        if payload == b"fail":
            return BackendStatus(Outcome.FAILED, "echo was asked to fail", payload)
        return BackendStatus(Outcome.SUCCEEDED, "echoed", payload)

    def info_url(self, token: str) -> str:
        return ""

    def handle_notification(
        self, execution: ExecutionTicket, data: bytes, attrs: Mapping[str, str]
    ) -> BackendStatus | Ignore:
        return IGNORE

    def notify_token(self, execution_id: int) -> str | None:
        return None

    async def probe(self) -> None:
        return None

    async def close(self) -> None:
        return None
