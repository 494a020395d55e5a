"""A steerable fake distributor for tests: every backend behaviour on demand.

Tests reach the instance through the registry and steer it: queue errors for the next
run/get_status/probe calls, end a task with any status, or let it run forever. Nothing
is pushed by itself: a test that wants a notification sends one through Notify.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from dispatcher.distributors.contract import (
    RUNNING,
    BackendStatus,
    Config,
    ExecutionTicket,
    Host,
    Ignore,
    PermanentError,
)
from dispatcher.distributors.wire import number, only_keys, parse_status
from dispatcher.domain.model import Job
from dispatcher.domain.states import Outcome

KIND = "fake"


class FakeDistributor:
    @staticmethod
    def validate(config: Config) -> None:
        only_keys(config, {"poll_timeout_seconds"})
        number(config, "poll_timeout_seconds", 0.0)

    def __init__(self, name: str, config: Config, host: Host) -> None:
        self.name = name
        self.host = host
        self.poll_timeout = timedelta(seconds=number(config, "poll_timeout_seconds", 60.0))
        self.tasks: dict[str, BackendStatus] = {}
        self.tickets: dict[str, ExecutionTicket] = {}
        self.jobs: dict[str, Job] = {}
        self.cancelled: list[str] = []
        self.run_errors: list[Exception] = []
        self.status_errors: list[Exception] = []
        self.probe_errors: list[Exception] = []
        self.status_calls = 0
        # Set: each task ends inside run() with this outcome and asks for a poll at once,
        # as a command that exits before its token is recorded does.
        self.ends_during_run: Outcome | None = None

    # --- steering -----------------------------------------------------------------

    def token_of(self, execution_id: int) -> str:
        return f"fake-{execution_id}"

    def finish(self, token: str, outcome: Outcome, info: str = "", **raw: Any) -> None:
        """The task ends with ``outcome`` (the dispatcher learns it by polling)."""
        self.tasks[token] = BackendStatus(outcome, info or outcome.value.lower(), raw=raw or None)

    def forget(self, token: str) -> None:
        """The backend loses the task: get_status answers PermanentError."""
        self.tasks.pop(token, None)

    # --- the contract -------------------------------------------------------------

    async def run(self, job: Job, execution: ExecutionTicket) -> tuple[str, timedelta]:
        if self.run_errors:
            raise self.run_errors.pop(0)
        token = self.token_of(execution.id)
        self.tasks.setdefault(token, RUNNING)
        self.tickets[token] = execution
        self.jobs[token] = job
        if self.ends_during_run is not None:
            self.finish(token, self.ends_during_run)
            self.host.poll_soon()
            await asyncio.sleep(0.05)  # run() answers a moment later: the poll comes first
        return token, self.poll_timeout

    async def cancel(self, token: str) -> None:
        self.cancelled.append(token)
        if token in self.tasks and self.tasks[token].running:
            self.tasks[token] = BackendStatus(Outcome.CANCELLED, "cancelled")

    async def get_status(self, token: str) -> BackendStatus:
        self.status_calls += 1
        if self.status_errors:
            raise self.status_errors.pop(0)
        if token not in self.tasks:
            raise PermanentError(f"no task {token}")
        return self.tasks[token]

    def info_url(self, token: str) -> str:
        return f"fake://{self.name}/{token}"

    def handle_notification(
        self, execution: ExecutionTicket, data: bytes, attrs: Mapping[str, str]
    ) -> BackendStatus | Ignore:
        if attrs.get("ignore"):
            return "ignore"
        return parse_status(data)

    def notify_token(self, execution_id: int) -> str | None:
        return None

    async def probe(self) -> None:
        if self.probe_errors:
            raise self.probe_errors.pop(0)

    async def close(self) -> None:
        return None
