"""The runner library: one Scheduler.Connect stream to a dispatcher, running what it assigns.

A :class:`Runner` says Hello, keeps the Welcome's session id and resume token, runs each
assigned job's command line as a :class:`~dispatcher_runner.process.JobProcess` (up to its
capacity at once), sends Accept, a Heartbeat every interval (with each execution's log
tail), and a Result when a job ends. A Cancel kills the job's process group and is
answered with CancelAck (never a Result). :meth:`Runner.stop` or ``stop_after_jobs`` (and
a Drain, with ``leave_when_drained``) make it finish what it holds, then say Goodbye and
return from :meth:`Runner.run`. Without ``leave_when_drained`` a drained runner stays
connected, idle once its jobs end, until the dispatcher undrains it.

When the stream breaks, jobs keep running: the runner reconnects with jittered
exponential back-off, sends its resume token in the new Hello, and delivers on the new
stream whatever the old one did not carry (Accepts, CancelAcks, and every Result not yet
acknowledged by a ResultAck). The Welcome lists the executions the new session holds;
any other job still running was decided while the runner was away, and is killed; an
execution it lists that never reached the runner (assigned as the stream broke) is
refused, so that the job goes back to the queue at once.

Several dispatcher replicas: ``server`` may list their addresses, comma-separated. The
runner connects to the first; when a stream fails, ends or is refused, it tries the next
one in the list (round robin), and re-attaches there with its resume token.

Everything here runs on one asyncio event loop; :meth:`Runner.stop` must be called from
that loop (a signal handler added with ``loop.add_signal_handler`` is fine).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import random
import re
import shlex
import socket
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Final, TypeAlias

import grpc
import grpc.aio

from dispatcher.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2
from dispatcher_runner import host_platform
from dispatcher_runner.process import DEFAULT_KILL_GRACE, JobProcess, ProcessResult

log = logging.getLogger(__name__)

DEFAULT_SERVER: Final = "127.0.0.1:50051"

CHANNEL_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    # HTTP/2 PINGs find a dead dispatcher (or network) while the stream is idle. The
    # server must accept pings this often (grpc.http2.min_recv_ping_interval_without_data_ms
    # <= 10000 and grpc.keepalive_permit_without_calls = 1), or it closes the connection
    # with "too_many_pings".
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

# Refusals that another attempt will not change: stop instead of reconnecting forever.
_FATAL_CODES: Final = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
# Environment variables of the runner that its jobs must not see.
_PRIVATE_ENV: Final = ("DISPATCHER_TOKEN",)
# After Goodbye, how long to let the dispatcher close the stream before cancelling it.
_GOODBYE_TIMEOUT: Final = 5.0
# A gRPC target naming its resolver ("dns:", "ipv4:127.0.0.1:1,127.0.0.1:2", "unix:"):
# one address, even with commas in it.
_GRPC_SCHEME: Final = re.compile(r"^(dns|ipv4|ipv6|unix|unix-abstract|vsock|xds)[:]")

_Call: TypeAlias = grpc.aio.StreamStreamCall[
    scheduler_pb2.ConnectRequest, scheduler_pb2.ConnectResponse
]


class RunnerError(Exception):
    """The runner cannot go on: the dispatcher refused it for good, or its set-up is bad."""


class _StreamLost(Exception):
    """The stream ended or the dispatcher broke the protocol; it is re-opened."""


def _package_version() -> str:
    try:
        return version("dispatcher")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    """How a runner connects and what it announces. Durations are in seconds."""

    server: str = DEFAULT_SERVER
    """The dispatcher's address, ``host:port``; or the addresses of several replicas,
    comma-separated, tried in turn (see the module docstring). A gRPC target with a
    scheme (``dns:``, ``ipv4:``, ``ipv6:``, ``unix:``...) is one address, used as is."""
    name: str = field(default_factory=socket.gethostname)
    """Unique per build machine; a second stream with the same name replaces the first."""
    platform: str = field(default_factory=host_platform)
    labels: tuple[str, ...] = ()
    capacity: int = 1
    """How many jobs it runs at once."""
    version: str = field(default_factory=_package_version)
    heartbeat_interval: float = 10.0
    """Used when the Welcome does not say how often to send heartbeats."""
    tls_ca_file: Path | None = None
    """When set, connect with TLS and trust this CA bundle (PEM); otherwise plaintext."""
    tls_cert_file: Path | None = None
    """Mutual TLS: this runner's certificate chain (PEM), with ``tls_key_file``."""
    tls_key_file: Path | None = None
    token: str | None = field(default=None, repr=False)
    """A runner token, sent as ``authorization: Bearer <token>`` metadata."""
    kill_grace: float = DEFAULT_KILL_GRACE
    """Seconds between SIGTERM and SIGKILL when a job is cancelled."""
    stop_after_jobs: int | None = None
    """Accept this many jobs, then leave once they have ended (``--once`` is 1)."""
    leave_when_drained: bool = False
    """On Drain, leave once the running jobs have ended, instead of waiting for an undrain."""
    reconnect_initial: float = 0.2
    reconnect_max: float = 10.0
    welcome_timeout: float = 30.0
    """How long to wait for the Welcome before dropping the stream and trying again."""
    result_ack_timeout: float = 5.0
    """When leaving, how long to wait for ResultAcks before saying Goodbye anyway."""
    heartbeat_logtail_bytes: int = 4 * 1024
    result_logtail_bytes: int = 64 * 1024
    env: Mapping[str, str] | None = None
    """The jobs' base environment; None: this process's environment."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        if self.stop_after_jobs is not None and self.stop_after_jobs < 1:
            raise ValueError("stop_after_jobs must be at least 1 when set")
        positive = {
            "heartbeat_interval": self.heartbeat_interval,
            "reconnect_initial": self.reconnect_initial,
            "reconnect_max": self.reconnect_max,
            "welcome_timeout": self.welcome_timeout,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.kill_grace < 0 or self.result_ack_timeout < 0:
            raise ValueError("kill_grace and result_ack_timeout must not be negative")
        if not self.name or not self.platform:
            raise ValueError("name and platform must not be empty")
        if not all(self.addresses):
            raise ValueError(f"server: an empty address in {self.server!r}")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("the TLS certificate and key go together: give both or neither")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            raise ValueError("a client certificate (mutual TLS) needs the CA file (TLS)")

    @property
    def addresses(self) -> tuple[str, ...]:
        """The dispatcher addresses in ``server``, in the order they are tried."""
        if _GRPC_SCHEME.match(self.server):
            return (self.server,)
        return tuple(address.strip() for address in self.server.split(","))


class Backoff:
    """Jittered exponential delays: ``initial``, doubling up to ``maximum``, each ±20 %."""

    def __init__(self, initial: float, maximum: float, rng: random.Random) -> None:
        self._initial = initial
        self._maximum = maximum
        self._rng = rng
        self._current = initial

    def next_delay(self) -> float:
        delay = min(self._maximum, self._current * self._rng.uniform(0.8, 1.2))
        self._current = min(self._maximum, self._current * 2)
        return delay

    def reset(self) -> None:
        self._current = self._initial


def _ended_on_its_own(result: ProcessResult) -> bool:
    """The process exited by itself, not by the signal that stopped it."""
    return result.returncode is not None and result.returncode >= 0


class _Ending(enum.Enum):
    CANCELLED = "cancelled"  # the dispatcher sent Cancel: answer CancelAck, not Result
    ABANDONED = "abandoned"  # the runner is leaving without it: send nothing


@dataclass(eq=False)
class _Execution:
    execution_id: int
    job_id: int
    process: JobProcess
    ending: _Ending | None = None


class Runner:
    """A build machine's connection to a dispatcher. See the module docstring."""

    def __init__(self, config: RunnerConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._addresses = config.addresses
        self._address_index = 0
        self._session_id = 0
        self._resume_token = ""
        self._heartbeat_interval = config.heartbeat_interval
        # While idle the dispatcher may allow fewer heartbeats (Welcome); a new
        # execution ends the idle wait at once.
        self._idle_heartbeat_interval = config.heartbeat_interval
        self._busy = asyncio.Event()
        # Until a Welcome says otherwise: the dispatcher's default re-attach grace.
        self._reattach_grace = 10.0
        self._detached_since: float | None = None
        self._executions: dict[int, _Execution] = {}
        # Results sent (or to send) and not yet acknowledged; resent on every new stream.
        self._results: dict[int, scheduler_pb2.ConnectRequest] = {}
        # Accept / Refuse / CancelAck that no stream has carried yet.
        self._unsent: list[scheduler_pb2.ConnectRequest] = []
        self._call: _Call | None = None
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._running = False
        self._stopping = False
        self._abandoning = False
        self._draining = False
        self._accepted = 0
        self._ended = 0
        self._leave_deadline: float | None = None

    # -- public surface ------------------------------------------------------------

    @property
    def session_id(self) -> int:
        """The session id of the last Welcome; 0 before the first."""
        return self._session_id

    @property
    def address(self) -> str:
        """The dispatcher address the runner uses now (or will try next)."""
        return self._addresses[self._address_index]

    @property
    def stopping(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopping

    @property
    def running_executions(self) -> frozenset[int]:
        """The execution ids whose processes are still running."""
        return frozenset(self._executions)

    @property
    def jobs_ended(self) -> int:
        """How many accepted executions have ended (finished, cancelled or abandoned)."""
        return self._ended

    def stop(self, *, abandon: bool = False) -> None:
        """Leave: finish the running jobs first, then say Goodbye and return from run().

        With ``abandon``, do not wait for them: kill their process groups (SIGTERM, then
        SIGKILL after ``kill_grace``), say Goodbye, and return; the dispatcher applies
        their on-lost policy. Calling it again with ``abandon`` escalates a graceful stop.
        """
        if abandon and not self._abandoning:
            log.info("stopping: abandoning %d running jobs", len(self._executions))
        elif not self._stopping:
            log.info("stopping once %d running jobs have ended", len(self._executions))
        self._stopping = True
        self._abandoning = self._abandoning or abandon
        self._changed.set()

    async def run(self) -> None:
        """Connect, run assigned jobs, and reconnect when the stream breaks, until told to leave.

        Returns after a Goodbye (stop(), Drain or ``stop_after_jobs``); also returns
        without one when told to leave while no stream is up and nothing is left to
        deliver. Raises :class:`RunnerError` when the dispatcher refuses the runner for
        good (bad token or Hello). Jobs still running when it returns or raises are killed.
        """
        if self._running:
            raise RuntimeError("this runner is already running")
        self._running = True
        credentials = self._channel_credentials()
        backoff = Backoff(self.config.reconnect_initial, self.config.reconnect_max, self._rng)
        try:
            while not self._may_exit_unconnected():
                try:
                    if await self._connect_once(credentials, backoff):
                        return
                    log.warning("dispatcher %s closed the stream", self.address)
                except grpc.aio.AioRpcError as exc:
                    log.warning(
                        "stream to dispatcher %s failed: %s: %s",
                        self.address,
                        exc.code().name,
                        exc.details(),
                    )
                except (_StreamLost, asyncio.InvalidStateError) as exc:
                    log.warning("stream to dispatcher %s lost: %s", self.address, exc)
                if self._may_exit_unconnected():
                    break
                self._next_address()
                await self._stop_jobs_past_the_grace()
                delay = backoff.next_delay()
                log.info("reconnecting in %.1fs (%d jobs running)", delay, len(self._executions))
                await self._pause(delay)
        finally:
            self._call = None
            await self._abandon_all()
            await self._cancel_tasks()
            self._running = False

    async def _stop_jobs_past_the_grace(self) -> None:
        """Cut off from the dispatcher for longer than the re-attach grace, our jobs have
        been decided without us (requeued elsewhere, or marked irrecoverable): running
        them on would run them twice."""
        now = asyncio.get_running_loop().time()
        if self._detached_since is None:
            self._detached_since = now
            return
        if now - self._detached_since <= self._reattach_grace:
            return
        for execution in self._executions.values():
            if execution.ending is _Ending.ABANDONED:
                continue
            log.warning(
                "execution %d: not re-attached within %.0fs; stopping job %d, which the "
                "dispatcher has given up",
                execution.execution_id,
                self._reattach_grace,
                execution.job_id,
                extra={"execution_id": execution.execution_id, "job_id": execution.job_id},
            )
            execution.ending = _Ending.ABANDONED
            self._spawn(self._kill(execution), f"kill {execution.execution_id}")

    def _next_address(self) -> None:
        if len(self._addresses) > 1:
            self._address_index = (self._address_index + 1) % len(self._addresses)
            log.info("trying dispatcher %s next", self.address)

    # -- one stream ----------------------------------------------------------------

    async def _connect_once(
        self, credentials: grpc.ChannelCredentials | None, backoff: Backoff
    ) -> bool:
        """Run one stream; True when it ended with our Goodbye, False when it just ended."""
        if credentials is None:
            channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)
        async with channel:
            stub = scheduler_pb2_grpc.SchedulerStub(channel)
            call = stub.Connect(None, metadata=self._metadata())
            try:
                return await self._session(call, backoff)
            finally:
                self._call = None
                call.cancel()

    async def _session(self, call: _Call, backoff: Backoff) -> bool:
        hello = scheduler_pb2.Hello(
            name=self.config.name,
            platform=self.config.platform,
            labels=self.config.labels,
            capacity=self.config.capacity,
            version=self.config.version,
            resume_token=self._resume_token,
        )
        log.info(
            "connecting to %s as %s (%s, labels %s, capacity %d)%s",
            self.address,
            self.config.name,
            self.config.platform,
            ",".join(self.config.labels) or "-",
            self.config.capacity,
            " to resume a session" if self._resume_token else "",
        )
        first: object = None
        try:
            await call.write(scheduler_pb2.ConnectRequest(hello=hello))
            first = await asyncio.wait_for(call.read(), timeout=self.config.welcome_timeout)
        except TimeoutError:
            raise _StreamLost(f"no Welcome within {self.config.welcome_timeout}s") from None
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended; its status says why
        if not isinstance(first, scheduler_pb2.ConnectResponse):
            code = await call.code()
            details = await call.details()
            if code in _FATAL_CODES:
                raise RunnerError(
                    f"dispatcher {self.address} refused this runner: {code.name}: {details}"
                )
            raise _StreamLost(f"closed before Welcome: {code.name}: {details}")
        if first.WhichOneof("message") != "welcome":
            raise _StreamLost(f"expected Welcome, got {first.WhichOneof('message')}")
        self._on_welcome(first.welcome)
        backoff.reset()
        await self._attach(call)

        reader = asyncio.create_task(self._read_loop(call), name="runner stream reader")
        heartbeats = asyncio.create_task(self._heartbeat_loop(), name="runner heartbeats")
        try:
            return await self._until_leaving(call, reader)
        finally:
            heartbeats.cancel()
            reader.cancel()
            await asyncio.gather(heartbeats, reader, return_exceptions=True)

    def _on_welcome(self, welcome: scheduler_pb2.Welcome) -> None:
        self._session_id = welcome.session_id
        if welcome.resume_token:
            self._resume_token = welcome.resume_token
        interval = welcome.heartbeat_interval.ToNanoseconds() / 1e9
        self._heartbeat_interval = interval if interval > 0 else self.config.heartbeat_interval
        idle = welcome.idle_heartbeat_interval.ToNanoseconds() / 1e9
        self._idle_heartbeat_interval = max(idle, self._heartbeat_interval)
        if welcome.HasField("reattach_grace"):
            self._reattach_grace = welcome.reattach_grace.ToNanoseconds() / 1e9
        self._detached_since = None
        log.info(
            "opened session %d on %s (holding %d executions); heartbeat every %.1fs",
            self._session_id,
            self.address,
            len(welcome.execution_ids),
            self._heartbeat_interval,
        )
        self._forget_all_but(frozenset(welcome.execution_ids))

    def _forget_all_but(self, held: frozenset[int]) -> None:
        """Drop what is about executions the session does not hold; kill their processes."""
        for execution in self._executions.values():
            if execution.execution_id in held or execution.ending is _Ending.ABANDONED:
                continue
            log.warning(
                "execution %d: the dispatcher gave job %d up while we were away; killing it",
                execution.execution_id,
                execution.job_id,
                extra={"execution_id": execution.execution_id, "job_id": execution.job_id},
            )
            execution.ending = _Ending.ABANDONED
            self._spawn(self._kill(execution), f"kill {execution.execution_id}")
        for execution_id in [e for e in self._results if e not in held]:
            # Still reported: the dispatcher refuses it and records the refusal in the
            # job's history, which is where an operator will look for it.
            log.info(
                "execution %d: the dispatcher decided it while we were away; reporting the "
                "late result anyway",
                execution_id,
                extra={"execution_id": execution_id},
            )
        self._unsent = [m for m in self._unsent if _execution_of(m) in held]
        known = {*self._executions, *self._results, *(_execution_of(m) for m in self._unsent)}
        for execution_id in sorted(held - known):
            # Assigned as the old stream broke: never received, so never started.
            log.warning(
                "execution %d: held by the session but never received here; refusing it",
                execution_id,
                extra={"execution_id": execution_id},
            )
            self._unsent.append(
                scheduler_pb2.ConnectRequest(
                    refuse=scheduler_pb2.Refuse(
                        execution_id=execution_id,
                        reason="never received: assigned while the stream broke",
                    )
                )
            )

    async def _attach(self, call: _Call) -> None:
        """Make ``call`` the stream for sending, first delivering what earlier ones did not."""
        async with self._write_lock:
            while self._unsent:
                await call.write(self._unsent[0])
                self._unsent.pop(0)
            for result in list(self._results.values()):
                await call.write(result)
            self._call = call

    async def _until_leaving(self, call: _Call, reader: asyncio.Task[None]) -> bool:
        while True:
            self._changed.clear()
            if reader.done():
                reader.result()  # raises how the stream failed, if it did
                return False
            reason, wait = self._leave_reason()
            if reason is not None:
                await self._say_goodbye(call, reader, reason)
                return True
            changed = asyncio.create_task(self._changed.wait())
            try:
                await asyncio.wait(
                    {reader, changed}, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                changed.cancel()

    def _leave_reason(self) -> tuple[str | None, float | None]:
        """Why to say Goodbye now, or else how long at most to wait before asking again."""
        if self._abandoning:
            return "stopping; abandoning running jobs", None
        if self._stopping:
            reason = "stopping"
        elif self._draining:
            reason = "drained"
        elif self._limit_reached():
            reason = f"ran {self._accepted} job{'' if self._accepted == 1 else 's'} as asked"
        else:
            return None, None
        if self._executions:
            return None, None
        if self._results:  # give the dispatcher a moment to acknowledge them
            now = asyncio.get_running_loop().time()
            if self._leave_deadline is None:
                self._leave_deadline = now + self.config.result_ack_timeout
            if now < self._leave_deadline:
                return None, self._leave_deadline - now
            log.warning(
                "leaving without ResultAck for executions %s",
                ", ".join(str(execution_id) for execution_id in self._results),
            )
        return reason, None

    def _limit_reached(self) -> bool:
        limit = self.config.stop_after_jobs
        return limit is not None and self._accepted >= limit

    def _may_exit_unconnected(self) -> bool:
        """Whether run() may return although no stream is up (so no Goodbye)."""
        if self._abandoning:
            return True
        leaving = self._stopping or self._draining or self._limit_reached()
        return leaving and not self._executions and not self._results

    async def _say_goodbye(self, call: _Call, reader: asyncio.Task[None], reason: str) -> None:
        if self._abandoning:
            await self._abandon_all()
        async with self._write_lock:
            self._call = None
            try:
                await call.write(
                    scheduler_pb2.ConnectRequest(goodbye=scheduler_pb2.Goodbye(reason=reason))
                )
                await call.done_writing()
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                log.warning("could not say goodbye: %s", exc)
                return
        log.info("said goodbye to %s: %s", self.address, reason)
        # Let the dispatcher end the stream, so it has read everything we sent.
        await asyncio.wait({reader}, timeout=_GOODBYE_TIMEOUT)

    # -- messages from the dispatcher ----------------------------------------------

    async def _read_loop(self, call: _Call) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, scheduler_pb2.ConnectResponse):
                return  # the dispatcher ended the stream
            kind = message.WhichOneof("message")
            if kind == "assign":
                await self._on_assign(message.assign)
            elif kind == "cancel":
                self._on_cancel(message.cancel)
            elif kind == "drain":
                self._on_drain(message.drain)
            elif kind == "result_ack":
                self._on_result_ack(message.result_ack)
            elif kind == "welcome":
                log.warning("ignoring a second Welcome on session %d", self._session_id)
            else:
                log.warning("ignoring an unknown message from the dispatcher: %r", kind)

    async def _on_assign(self, assign: scheduler_pb2.Assign) -> None:
        execution_id = assign.execution_id
        job = assign.job
        extra = {"execution_id": execution_id, "job_id": job.id}
        if execution_id in self._executions or execution_id in self._results:
            log.info("execution %d: assigned again; already have it", execution_id, extra=extra)
            await self._send(_accept(execution_id), keep=True)
            return
        refusal = self._refusal()
        if refusal is not None:
            log.info(
                "execution %d: refusing job %d: %s", execution_id, job.id, refusal, extra=extra
            )
            await self._send(
                scheduler_pb2.ConnectRequest(
                    refuse=scheduler_pb2.Refuse(execution_id=execution_id, reason=refusal)
                ),
                keep=True,
            )
            return
        self._accepted += 1
        await self._send(_accept(execution_id), keep=True)
        process = await JobProcess.start(
            job.spec.command,
            kill_grace=self.config.kill_grace,
            env=self._job_env(job, execution_id),
            label=f"execution {execution_id}",
        )
        log.info(
            "execution %d: started job %d (attempt %d, pid %s): %s",
            execution_id,
            job.id,
            job.attempt,
            process.pid,
            shlex.join(job.spec.command),
            extra=extra,
        )
        execution = _Execution(execution_id=execution_id, job_id=job.id, process=process)
        self._executions[execution_id] = execution
        self._busy.set()
        self._spawn(self._finish(execution), f"execution {execution_id}")

    def _refusal(self) -> str | None:
        if self._stopping:
            return "runner is stopping"
        if self._draining:
            return "runner is draining"
        if self._limit_reached():
            return f"runner takes only {self.config.stop_after_jobs} jobs"
        if len(self._executions) >= self.config.capacity:
            return f"runner is at capacity ({self.config.capacity} jobs)"
        return None

    def _on_cancel(self, cancel: scheduler_pb2.Cancel) -> None:
        execution_id = cancel.execution_id
        reason = cancel.reason or "no reason given"
        execution = self._executions.get(execution_id)
        if execution is None:
            # Finished already, or never ours: nothing runs, so confirm at once.
            log.info(
                "execution %d: cancel (%s) for an execution not running here; confirming",
                execution_id,
                reason,
                extra={"execution_id": execution_id},
            )
            self._spawn(
                self._send(_cancel_ack(execution_id), keep=True), f"cancel-ack {execution_id}"
            )
            return
        if execution.ending is not None:
            return  # already being killed; its CancelAck follows
        log.info(
            "execution %d: cancelled (%s); killing job %d",
            execution_id,
            reason,
            execution.job_id,
            extra={"execution_id": execution_id, "job_id": execution.job_id},
        )
        execution.ending = _Ending.CANCELLED
        self._spawn(self._kill(execution), f"kill {execution_id}")

    def _on_drain(self, drain: scheduler_pb2.Drain) -> None:
        log.info(
            "drained (%s): finishing %d running jobs, then %s",
            drain.reason or "no reason given",
            len(self._executions),
            "leaving" if self.config.leave_when_drained else "waiting for an undrain",
        )
        # Without leave_when_drained there is nothing to do: the dispatcher assigns
        # nothing until it undrains the runner, and then it simply assigns again.
        if self.config.leave_when_drained:
            self._draining = True
            self._changed.set()

    def _on_result_ack(self, ack: scheduler_pb2.ResultAck) -> None:
        extra = {"execution_id": ack.execution_id}
        if self._results.pop(ack.execution_id, None) is None:
            log.debug("execution %d: ResultAck for no pending result", ack.execution_id)
        elif ack.applied:
            log.debug("execution %d: result recorded", ack.execution_id, extra=extra)
        else:
            log.warning(
                "execution %d: result refused by the dispatcher: %s",
                ack.execution_id,
                ack.reason or "no reason given",
                extra=extra,
            )
        self._changed.set()

    # -- executions ----------------------------------------------------------------

    async def _finish(self, execution: _Execution) -> None:
        """Wait for an execution's process and report how it ended."""
        execution_id = execution.execution_id
        extra = {"execution_id": execution_id, "job_id": execution.job_id}
        try:
            result = await execution.process.wait()
        finally:
            del self._executions[execution_id]
            self._ended += 1
            self._changed.set()
        if execution.ending is _Ending.CANCELLED:
            log.info("execution %d: killed (%s)", execution_id, result.info, extra=extra)
            await self._send(_cancel_ack(execution_id), keep=True)
        elif execution.ending is _Ending.ABANDONED and not _ended_on_its_own(result):
            log.info("execution %d: abandoned (%s)", execution_id, result.info, extra=extra)
        else:
            # A job given up while it was finishing (say, the runner was frozen) still
            # reports: the dispatcher refuses the late result and records the refusal.
            log.info(
                "execution %d: job %d %s: %s",
                execution_id,
                execution.job_id,
                "succeeded" if result.succeeded else "failed",
                result.info,
                extra=extra,
            )
            message = scheduler_pb2.ConnectRequest(
                result=scheduler_pb2.Result(
                    execution_id=execution_id,
                    outcome=(
                        types_pb2.OUTCOME_SUCCEEDED
                        if result.succeeded
                        else types_pb2.OUTCOME_FAILED
                    ),
                    info=result.info,
                    logtail=execution.process.logtail(self.config.result_logtail_bytes),
                )
            )
            self._results[execution_id] = message
            await self._send(message, keep=False)

    async def _kill(self, execution: _Execution) -> None:
        await execution.process.kill()

    async def _abandon_all(self) -> None:
        """Kill every running job without reporting it, and wait until they are gone."""
        executions = list(self._executions.values())
        if not executions:
            return
        for execution in executions:
            execution.ending = _Ending.ABANDONED
            log.warning(
                "execution %d: abandoning job %d",
                execution.execution_id,
                execution.job_id,
                extra={"execution_id": execution.execution_id, "job_id": execution.job_id},
            )
        try:
            await asyncio.gather(*(execution.process.kill() for execution in executions))
        except BaseException:
            for execution in executions:  # cancelled while waiting: do not leave them running
                execution.process.kill_now()
            raise

    def _job_env(self, job: types_pb2.Job, execution_id: int) -> dict[str, str]:
        env = dict(os.environ if self.config.env is None else self.config.env)
        for name in _PRIVATE_ENV:
            env.pop(name, None)
        env.update(
            DISPATCHER_JOB_ID=str(job.id),
            DISPATCHER_EXECUTION_ID=str(execution_id),
            DISPATCHER_ATTEMPT=str(job.attempt),
            DISPATCHER_QUEUE=job.spec.queue,
            DISPATCHER_RUNNER=self.config.name,
        )
        return env

    # -- sending -------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            if self._executions:
                await asyncio.sleep(self._heartbeat_interval)
            else:
                # Also when idle, only less often: a session silent for too long is
                # closed by the dispatcher. Work arriving ends the wait: from then on
                # the dispatcher expects heartbeats at the shorter interval.
                self._busy.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_heartbeat_interval):
                        await self._busy.wait()
                if self._executions:
                    continue
            progress = [
                scheduler_pb2.ExecutionProgress(
                    execution_id=execution.execution_id,
                    logtail=execution.process.logtail(self.config.heartbeat_logtail_bytes),
                    progress_percent=-1,
                )
                for execution in self._executions.values()
                if execution.ending is not _Ending.ABANDONED
            ]
            await self._send(
                scheduler_pb2.ConnectRequest(
                    heartbeat=scheduler_pb2.Heartbeat(executions=progress)
                ),
                keep=False,
            )

    async def _send(self, message: scheduler_pb2.ConnectRequest, *, keep: bool) -> None:
        """Write on the current stream; with ``keep``, hold it for the next one if that fails."""
        async with self._write_lock:
            call = self._call
            if call is not None:
                try:
                    await call.write(message)
                    return
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                    log.debug("could not send %s: %s", message.WhichOneof("message"), exc)
                except asyncio.CancelledError:
                    # The stream was cancelled under the write; only our own cancellation
                    # is ours to pass on.
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise
            if keep:
                self._unsent.append(message)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        if self.config.token:
            return (("authorization", f"Bearer {self.config.token}"),)
        return ()

    def _channel_credentials(self) -> grpc.ChannelCredentials | None:
        if self.config.tls_ca_file is None:
            return None
        config = self.config
        try:
            roots = self.config.tls_ca_file.read_bytes()
            key = config.tls_key_file.read_bytes() if config.tls_key_file else None
            chain = config.tls_cert_file.read_bytes() if config.tls_cert_file else None
        except OSError as exc:
            raise RunnerError(f"cannot read a TLS file: {exc}") from exc
        return grpc.ssl_channel_credentials(
            root_certificates=roots, private_key=key, certificate_chain=chain
        )

    # -- tasks and waiting ---------------------------------------------------------

    def _spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=exc)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less when run() may return."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
        while (remaining := deadline - loop.time()) > 0 and not self._may_exit_unconnected():
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)


def _execution_of(message: scheduler_pb2.ConnectRequest) -> int:
    kind = message.WhichOneof("message")
    if kind == "accept":
        return message.accept.execution_id
    if kind == "refuse":
        return message.refuse.execution_id
    if kind == "cancel_ack":
        return message.cancel_ack.execution_id
    if kind == "result":
        return message.result.execution_id
    return 0


def _accept(execution_id: int) -> scheduler_pb2.ConnectRequest:
    return scheduler_pb2.ConnectRequest(accept=scheduler_pb2.Accept(execution_id=execution_id))


def _cancel_ack(execution_id: int) -> scheduler_pb2.ConnectRequest:
    return scheduler_pb2.ConnectRequest(
        cancel_ack=scheduler_pb2.CancelAck(execution_id=execution_id)
    )
