"""The ``subprocess`` adapter: runs a job's command on the dispatcher's own host (handy
for the embedded mode, SPEC §7).

The command gets the job's payload on stdin and DISPATCHER_JOB_ID /
DISPATCHER_EXECUTION_ID in its environment; its output's tail becomes the job's info and
result. Exit status 0 is SUCCEEDED, anything else FAILED. A cancel sends SIGTERM to the
command's process group, and SIGKILL after ``kill_grace_seconds``. Parallelism is the
instance's ``parallelism``. The dispatcher learns that a command ended at once (the
adapter asks for a poll), without waiting for the poll timeout.

Processes die with the dispatcher (``close``): a restarted dispatcher no longer knows
them, so their executions are *missing* and the jobs follow their on-lost policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from dispatcher.distributors.contract import (
    IGNORE,
    RUNNING,
    BackendStatus,
    Config,
    ExecutionTicket,
    Host,
    Ignore,
    PermanentError,
)
from dispatcher.distributors.wire import number, only_keys, text
from dispatcher.domain.model import Job
from dispatcher.domain.states import Outcome

KIND = "subprocess"
# Finished tasks remembered for get_status after they ended.
_REMEMBERED = 10_000


@dataclass
class _Task:
    process: asyncio.subprocess.Process
    output: bytearray = field(default_factory=bytearray)
    cancelled: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None


class SubprocessDistributor:
    @staticmethod
    def validate(config: Config) -> None:
        only_keys(config, {"max_output_bytes", "kill_grace_seconds", "working_directory"})
        number(config, "max_output_bytes", 8192, minimum=1)
        number(config, "kill_grace_seconds", 5.0)
        text(config, "working_directory")

    def __init__(self, name: str, config: Config, host: Host) -> None:
        self._name = name
        self._host = host
        self._max_output = int(number(config, "max_output_bytes", 8192, minimum=1))
        self._kill_grace = number(config, "kill_grace_seconds", 5.0)
        self._cwd = text(config, "working_directory") or None
        self._tasks: OrderedDict[str, _Task] = OrderedDict()

    async def run(self, job: Job, execution: ExecutionTicket) -> tuple[str, timedelta]:
        token = f"{self._name}-{execution.id}"
        if token in self._tasks:
            return token, timedelta(seconds=60)  # run() again for the same execution
        command = job.spec.command
        if not command:
            raise PermanentError("the job has no command to run")
        env = {
            **os.environ,
            "DISPATCHER_JOB_ID": str(job.id),
            "DISPATCHER_EXECUTION_ID": str(execution.id),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=self._cwd,
                start_new_session=True,  # its own process group: a cancel kills it all
            )
        except OSError as exc:
            # The command cannot start on this host; trying again will not help.
            raise PermanentError(f"cannot start {command[0]!r}: {exc.strerror or exc}") from None
        task = _Task(process)
        task.watcher = asyncio.create_task(self._watch(task, job.spec.payload))
        self._tasks[token] = task
        while len(self._tasks) > _REMEMBERED:
            oldest, first = next(iter(self._tasks.items()))
            if not first.ended.is_set():
                break
            del self._tasks[oldest]
        # The watcher asks for a poll when the command ends; this is only a backstop.
        return token, timedelta(seconds=60)

    async def _watch(self, task: _Task, payload: bytes) -> None:
        process = task.process
        if process.stdin is None or process.stdout is None:  # both are pipes, by run()
            raise RuntimeError("the process has no pipes")
        with contextlib.suppress(OSError):
            process.stdin.write(payload)
            await process.stdin.drain()
        with contextlib.suppress(OSError):
            process.stdin.close()
        while chunk := await process.stdout.read(65536):
            task.output += chunk
            del task.output[: -self._max_output]
        await process.wait()
        task.ended.set()
        self._host.poll_soon()

    async def cancel(self, token: str) -> None:
        task = self._tasks.get(token)
        if task is None or task.ended.is_set():
            return
        task.cancelled = True
        self._signal(task, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._kill_grace):
                await task.ended.wait()
        self._signal(task, signal.SIGKILL)

    @staticmethod
    def _signal(task: _Task, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(task.process.pid, sig)

    async def get_status(self, token: str) -> BackendStatus:
        task = self._tasks.get(token)
        if task is None:
            raise PermanentError(f"no process {token} on this host (the dispatcher restarted?)")
        if not task.ended.is_set():
            return RUNNING
        code = task.process.returncode
        tail = bytes(task.output)
        last = tail.decode(errors="replace").strip().splitlines()[-1:] or [""]
        if task.cancelled:
            return BackendStatus(Outcome.CANCELLED, "cancelled; the process was stopped", tail)
        if code == 0:
            return BackendStatus(Outcome.SUCCEEDED, "exit status 0", tail)
        why = (
            f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        )
        return BackendStatus(Outcome.FAILED, f"{why}: {last[0]}".rstrip(": "), tail)

    def info_url(self, token: str) -> str:
        return ""

    def handle_notification(
        self, execution: ExecutionTicket, data: bytes, attrs: Mapping[str, str]
    ) -> BackendStatus | Ignore:
        return IGNORE  # nothing pushes; the watcher asks for a poll instead

    def notify_token(self, execution_id: int) -> str | None:
        return None

    async def probe(self) -> None:
        return None  # this host is up while the dispatcher runs

    async def close(self) -> None:
        for task in self._tasks.values():
            if not task.ended.is_set():
                self._signal(task, signal.SIGKILL)
        for task in self._tasks.values():
            if task.watcher is not None:
                task.watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task.watcher
