"""Running one job's command line on this machine.

A job's command is an argv list, started without a shell in a session (and so a process
group) of its own, with stdout and stderr merged into one pipe. The last part of that
output is kept in a bounded :class:`LogTail` for heartbeats and the final result.

Ending a job ends its whole process group: :meth:`JobProcess.kill` sends SIGTERM to the
group and SIGKILL after a grace period, and processes a job leaves behind in its group
when it exits on its own are ended the same way. Only a process that left the group on
purpose (``setsid``) survives; its output is no longer read once the job has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_KILL_GRACE = 5.0
"""Seconds between SIGTERM and SIGKILL."""
DEFAULT_TAIL_BYTES = 64 * 1024
DEFAULT_TAIL_LINES = 1000

_READ_CHUNK = 64 * 1024
# After the job's process group is gone, how long to wait for the output pipe to close.
# Only a process that escaped the group can hold it open longer.
_DRAIN_TIMEOUT = 2.0
_GROUP_POLL_INTERVAL = 0.05
_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessResult:
    """How a job's process ended."""

    succeeded: bool
    # A human reason: "exit status 2", "killed by signal SIGKILL", "cannot start 'x': ...".
    info: str
    # The exit status; minus the signal number when killed; None when it never started.
    returncode: int | None = None


class LogTail:
    """The last part of a process's output: at most ``max_bytes`` and ``max_lines``."""

    def __init__(
        self, max_bytes: int = DEFAULT_TAIL_BYTES, max_lines: int = DEFAULT_TAIL_LINES
    ) -> None:
        if max_bytes < 1 or max_lines < 1:
            raise ValueError("a log tail needs room for at least one byte and one line")
        self._max_bytes = max_bytes
        self._max_lines = max_lines
        self._buf = bytearray()
        # True when the buffer starts in the middle of a line.
        self._cut_mid_line = False
        self.total_bytes = 0
        """How many bytes were written in all, including those no longer kept."""

    def write(self, data: bytes) -> None:
        self.total_bytes += len(data)
        buf = self._buf
        buf += data
        excess = len(buf) - self._max_bytes
        if excess > 0:
            self._cut_mid_line = buf[excess - 1] != ord("\n")
            del buf[:excess]
        if buf.count(b"\n") >= self._max_lines:
            self._drop_extra_lines()

    def _drop_extra_lines(self) -> None:
        buf = self._buf
        # A trailing newline ends the last line; it does not start another one.
        pos = len(buf) - 1 if buf.endswith(b"\n") else len(buf)
        for _ in range(self._max_lines):
            pos = buf.rfind(b"\n", 0, pos)
            if pos < 0:
                return
        del buf[: pos + 1]
        self._cut_mid_line = False

    def text(self, max_bytes: int | None = None) -> str:
        """The kept output (or its last ``max_bytes``) as text, starting on a line when it can.

        Undecodable bytes become U+FFFD, so the result is always valid UTF-8.
        """
        data = bytes(self._buf)
        cut = self._cut_mid_line
        if max_bytes is not None and len(data) > max_bytes:
            cut = data[len(data) - max_bytes - 1] != ord("\n")
            data = data[len(data) - max_bytes :]
        if cut:
            newline = data.find(b"\n")
            if 0 <= newline < len(data) - 1:
                data = data[newline + 1 :]
            else:  # one long line: at least do not start inside a UTF-8 sequence
                skip = 0
                while skip < min(3, len(data)) and 0x80 <= data[skip] <= 0xBF:
                    skip += 1
                data = data[skip:]
        return data.decode("utf-8", errors="replace")


class JobProcess:
    """One running (or finished) job command. Create it with :meth:`start`."""

    def __init__(self, argv: Sequence[str], *, kill_grace: float, tail: LogTail, label: str):
        self.argv = tuple(argv)
        self.label = label
        self._kill_grace = kill_grace
        self._tail = tail
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[ProcessResult] | None = None
        # Kills the group if this object is collected, or the interpreter exits, before
        # the group has ended (say, an event loop closed without cancelling our tasks).
        self._reaper: weakref.finalize[[int, signal.Signals], JobProcess] | None = None
        self._terminator: asyncio.Task[None] | None = None
        self._result: ProcessResult | None = None
        self._killed = False

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        kill_grace: float = DEFAULT_KILL_GRACE,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        tail_bytes: int = DEFAULT_TAIL_BYTES,
        tail_lines: int = DEFAULT_TAIL_LINES,
        label: str = "job",
    ) -> JobProcess:
        """Start ``argv`` in a new session; ``label`` names it in log messages.

        Never raises for a command that cannot start: the returned process has then
        already ended, FAILED, with the reason as its info (and in its log tail).
        """
        if kill_grace < 0:
            raise ValueError("kill_grace must not be negative")
        job = cls(argv, kill_grace=kill_grace, tail=LogTail(tail_bytes, tail_lines), label=label)
        if not job.argv:
            job._fail_to_start("no command to run")
            return job
        # Our own pipe, not asyncio's: asyncio's Process.wait() would also wait for the
        # output to close, which a background process the job leaves behind can hold open.
        read_fd, write_fd = os.pipe()
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *job.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    env=None if env is None else dict(env),
                    cwd=cwd,
                )
            finally:
                os.close(write_fd)
        except OSError as exc:
            os.close(read_fd)
            job._fail_to_start(f"cannot start {job.argv[0]!r}: {exc.strerror or exc}")
            return job
        job._proc = proc
        job._reaper = weakref.finalize(job, _signal_group, proc.pid, signal.SIGKILL)
        log.debug("%s: started pid %d: %s", label, proc.pid, job.argv)
        try:
            output = await _open_output(read_fd)
        except BaseException:
            job.kill_now()
            raise
        job._supervisor = asyncio.create_task(job._supervise(*output), name=f"{label} supervisor")
        return job

    def _fail_to_start(self, info: str) -> None:
        self._result = ProcessResult(succeeded=False, info=info)
        self._tail.write(info.encode() + b"\n")
        log.info("%s: %s", self.label, info)

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id), or None if it never started."""
        return None if self._proc is None else self._proc.pid

    @property
    def result(self) -> ProcessResult | None:
        """How it ended, once it has ended (its group gone and its output read)."""
        return self._result

    @property
    def killed(self) -> bool:
        """Whether :meth:`kill` was called."""
        return self._killed

    def logtail(self, max_bytes: int | None = None) -> str:
        """The last part of the output so far; see :meth:`LogTail.text`."""
        return self._tail.text(max_bytes)

    async def wait(self) -> ProcessResult:
        """Wait until the process has ended and its output has been read."""
        if self._supervisor is None:
            if self._result is None:  # pragma: no cover - start() always sets one of them
                raise RuntimeError("the process was never started")
            return self._result
        # Cancelling a waiter must not cancel the supervision.
        return await asyncio.shield(self._supervisor)

    async def kill(self) -> ProcessResult:
        """End the whole process group: SIGTERM, then SIGKILL after the grace period.

        Returns how the process ended (usually "killed by signal SIGTERM"); calling it
        again, or on a process that already ended, only waits.
        """
        self._killed = True
        proc = self._proc
        if proc is not None and self._result is None:
            if proc.returncode is None:
                log.info("%s: killing process group %d", self.label, proc.pid)
                await self._end_group()
            elif _group_alive(proc.pid):
                await self._end_group()
        return await self.wait()

    def kill_now(self) -> None:
        """SIGKILL the process group at once, without waiting: for emergency clean-up."""
        self._killed = True
        if self._proc is not None and self._result is None:
            _signal_group(self._proc.pid, signal.SIGKILL)

    async def _supervise(
        self, transport: asyncio.ReadTransport, output: asyncio.StreamReader
    ) -> ProcessResult:
        proc = self._proc
        if proc is None:  # pragma: no cover - set by start()
            raise RuntimeError("the process was never started")
        reader = asyncio.create_task(self._read(output), name=f"{self.label} reader")
        try:
            returncode = await proc.wait()
            if _group_alive(proc.pid):
                if not self._killed:
                    log.info("%s: exited leaving processes behind; ending them", self.label)
                await self._end_group()
            _, pending = await asyncio.wait({reader}, timeout=_DRAIN_TIMEOUT)
            if pending:
                log.warning(
                    "%s: output still open after the job ended (a process left its group?);"
                    " no longer reading it",
                    self.label,
                )
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            transport.close()
        if self._reaper is not None:
            self._reaper.detach()
        self._result = _result_of(returncode)
        log.debug("%s: %s", self.label, self._result.info)
        return self._result

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            self._tail.write(chunk)

    async def _end_group(self) -> None:
        # One termination at a time, shared by kill() and the supervisor; a cancelled
        # waiter must not stop it half-way.
        if self._terminator is None:
            self._terminator = asyncio.create_task(
                self._terminate_group(), name=f"{self.label} terminator"
            )
        await asyncio.shield(self._terminator)

    async def _terminate_group(self) -> None:
        proc = self._proc
        if proc is None:  # pragma: no cover - only called once started
            return
        pgid = proc.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._kill_grace
        _signal_group(pgid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout=self._kill_grace)
        # Nothing signals that a process group has emptied (its other members are not
        # our children, so they cannot be waited for): poll it until the deadline.
        while _group_alive(pgid) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_GROUP_POLL_INTERVAL)
        if proc.returncode is None or _group_alive(pgid):
            log.warning(
                "%s: process group %d still running %.1fs after SIGTERM; sending SIGKILL",
                self.label,
                pgid,
                self._kill_grace,
            )
            _signal_group(pgid, signal.SIGKILL)
        await proc.wait()


async def _open_output(read_fd: int) -> tuple[asyncio.ReadTransport, asyncio.StreamReader]:
    """Read the pipe ``read_fd`` (which this takes over) with asyncio."""
    pipe = os.fdopen(read_fd, "rb", buffering=0)
    try:
        stream = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(stream), pipe
        )
    except BaseException:
        pipe.close()
        raise
    return transport, stream


def _result_of(returncode: int) -> ProcessResult:
    if returncode == 0:
        return ProcessResult(succeeded=True, info="exit status 0", returncode=0)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return ProcessResult(
            succeeded=False, info=f"killed by signal {name}", returncode=returncode
        )
    return ProcessResult(succeeded=False, info=f"exit status {returncode}", returncode=returncode)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    """Whether the process group still has a member that is not a zombie.

    Zombies count as gone: an orphan's zombie lingers until init reaps it, which some
    container inits never do.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not _PROC.is_dir():
        return True
    with os.scandir(_PROC) as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_bytes()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses.
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
                return True
    return False
