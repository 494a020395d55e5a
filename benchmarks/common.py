"""What the benchmarks share: a database to run on, the no-op runner streams, the
throughput workload and the way figures are summed up.

The runners live in the benchmark's own process, the server in another (a real
``dispatcher serve``, started by ``tests.support.processes.dispatcher_server``), so a
runner's clock and the submitter's clock are one: ``time.perf_counter``.
"""

from __future__ import annotations

import asyncio
import random
import resource
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from dispatcher.v1 import admin_pb2, admin_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2
from tests.support.databases import DATABASE_PREFIX, provide_server
from tests.support.tokens import RoleTokens

PLATFORM = "bench/noop"

DATABASE_HELP = (
    "'sqlite' (a fresh file), 'postgresql' (a throwaway database on the tests' "
    "PostgreSQL server, dropped after the run) or a PostgreSQL URL (its tables are used)"
)


# --- where the server keeps its jobs ----------------------------------------------


@contextmanager
def database(kind: str, benchmark: str, workdir: Path) -> Iterator[str]:
    """The SQLAlchemy URL of a database for one run. ``sqlite``: a new file in
    ``workdir``; ``postgresql``: a new database on the tests' server (see
    tests/support/databases.py), named after the benchmark and this process, dropped at
    the end; anything else is taken as a URL and used as it is."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
    elif kind == "postgresql":
        server = provide_server()
        url = server.create_database(prefix=f"{DATABASE_PREFIX}_bench_{benchmark}")
        try:
            yield url
        finally:
            server.drop_database(url)
            server.stop()
    else:
        yield kind


def shown(kind: str) -> str:
    """A database setting as printed: no user or password."""
    return kind.split("@")[-1]


@contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dispatcher-bench-") as path:
        yield Path(path)


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (children started
    afterwards inherit it); returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --- figures ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The value below which a fraction ``q`` of ``values`` lies (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spread(values: Sequence[float], fmt: str = "{:,.1f}", unit: str = "") -> str:
    """``median (min-max) unit`` over the runs."""
    middle, low, high = statistics.median(values), min(values), max(values)
    return f"{fmt.format(middle)} ({fmt.format(low)}-{fmt.format(high)}){unit}"


# --- a client as the shipped ones are ----------------------------------------------


class Client:
    """One plain channel used the way dispatcher-runner and the CLI use theirs: every
    call carries its role's token as metadata. (The tests' channels add it through a
    client interceptor instead, which costs grpc.aio a task per call and a layer on
    every stream read: the client's cost, not the dispatcher's.)"""

    def __init__(self, address: str, tokens: RoleTokens) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.runner_metadata = (("authorization", f"Bearer {tokens.runner}"),)
        self._admin = admin_pb2_grpc.AdminStub(self.channel)
        self._admin_metadata = (("authorization", f"Bearer {tokens.admin}"),)

    async def submit(self, spec: types_pb2.JobSpec) -> admin_pb2.SubmitJobResponse:
        return await self._admin.SubmitJob(
            admin_pb2.SubmitJobRequest(spec=spec), metadata=self._admin_metadata
        )

    async def submit_many(self, batch: Sequence[types_pb2.JobSpec]) -> admin_pb2.SubmitJobsResponse:
        return await self._admin.SubmitJobs(
            admin_pb2.SubmitJobsRequest(specs=batch), metadata=self._admin_metadata
        )

    async def close(self) -> None:
        await self.channel.close(None)


@asynccontextmanager
async def client(address: str, tokens: RoleTokens) -> AsyncIterator[Client]:
    made = Client(address, tokens)
    try:
        yield made
    finally:
        await made.close()


# --- no-op runner streams ---------------------------------------------------------


@dataclass
class Hello:
    name: str
    capacity: int
    platform: str = PLATFORM


class RunnerPool:
    """Runner streams in this process that accept every assignment and report success at
    once (no subprocess: this measures the dispatcher, not fork/exec). Each sends the
    heartbeats its Welcome asks for, like a real runner. ``assigned`` maps a job id to
    ``clock()`` when its Assign arrived; ``finished`` counts acknowledged results."""

    def __init__(
        self,
        clock: Callable[[], float] = time.perf_counter,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        self.clock = clock
        # Sent with each Connect (a runner token), unless the channel adds its own.
        self.metadata = metadata
        self.assigned: dict[int, float] = {}
        self.finished = 0
        self.welcomed = 0
        self.lost: list[str] = []
        # Set to try a Connect again when it ends before its Welcome; each such end is
        # then counted in ``refused``, not in ``lost``.
        self.retry_refused = False
        self.refused: list[str] = []
        self._news = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    def open(self, channel: grpc.aio.Channel, hello: Hello) -> None:
        """Open one stream on ``channel`` (its Hello is sent, the Welcome awaited later)."""
        self._tasks.append(asyncio.create_task(self._stream(channel, hello)))

    async def connect(
        self, channel: grpc.aio.Channel, count: int, capacity: int, prefix: str = "bench"
    ) -> None:
        """Open ``count`` streams named ``prefix-i`` and wait for their Welcomes."""
        for i in range(count):
            self.open(channel, Hello(f"{prefix}-{i}", capacity))
        async with asyncio.timeout(60.0):
            await self.welcomed_all()

    @property
    def streams(self) -> int:
        return len(self._tasks)

    async def until(self, ready: Callable[[], bool], *, fail_on_lost: bool = True) -> None:
        """Wait until ``ready()`` holds, re-checked whenever a stream hears something;
        a stream that ended on its own stops the wait unless ``fail_on_lost`` is off."""
        while not ready():
            if self.lost and fail_on_lost:
                raise RuntimeError(f"a runner stream ended: {self.lost[0]}")
            self._news.clear()
            await self._news.wait()

    async def welcomed_all(self) -> None:
        await self.until(lambda: self.welcomed >= len(self._tasks))

    async def assign_of(self, job_id: int) -> float:
        await self.until(lambda: job_id in self.assigned)
        return self.assigned[job_id]

    async def close(self) -> None:
        """Say goodbye on every stream and end them."""
        self._stopping = True
        self._news.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _stream(self, channel: grpc.aio.Channel, hello: Hello) -> None:
        """One stream; a Connect that ends before its Welcome is tried again after a
        random back-off when ``retry_refused`` is set, as a real runner reconnects."""
        backoff = 0.5
        while True:
            welcomed, failure = await self._attempt(channel, hello)
            if self._stopping:
                return
            if welcomed or not self.retry_refused:
                self.lost.append(f"{hello.name}: {failure}")
                self._news.set()
                return
            self.refused.append(f"{hello.name}: {failure}")
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 8.0)

    async def _attempt(self, channel: grpc.aio.Channel, hello: Hello) -> tuple[bool, str]:
        """Run one Connect call until the server ends it; returns whether it was welcomed
        and why it ended. Closing the pool cancels it (after a Goodbye)."""
        # Any: grpc-stubs types neither a stream-stream call without an iterator nor EOF.
        call: Any = scheduler_pb2_grpc.SchedulerStub(channel).Connect(  # type: ignore[call-arg]
            metadata=self.metadata
        )
        beats: asyncio.Task[None] | None = None
        # One write at a time on a call (a second one fails): heartbeats and reports.
        writing = asyncio.Lock()
        try:
            await call.write(
                scheduler_pb2.ConnectRequest(
                    hello=scheduler_pb2.Hello(
                        name=hello.name,
                        platform=hello.platform,
                        capacity=hello.capacity,
                        version="bench",
                    )
                )
            )
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:  # type: ignore[attr-defined]
                    raise RuntimeError("the server ended the stream")
                kind = message.WhichOneof("message")
                if kind == "welcome" and beats is None:
                    # Like the runner library: a runner holding no executions (a no-op
                    # runner holds them for moments) heartbeats at the idle interval.
                    welcome = message.welcome
                    told = (
                        welcome.idle_heartbeat_interval
                        if welcome.HasField("idle_heartbeat_interval")
                        else welcome.heartbeat_interval
                    )
                    interval = told.ToTimedelta().total_seconds()
                    beats = asyncio.create_task(_heartbeats(call, writing, interval or 10.0))
                    self.welcomed += 1
                elif kind == "assign":
                    execution_id = message.assign.execution_id
                    self.assigned[message.assign.job.id] = self.clock()
                    async with writing:
                        await call.write(
                            scheduler_pb2.ConnectRequest(
                                accept=scheduler_pb2.Accept(execution_id=execution_id)
                            )
                        )
                        await call.write(
                            scheduler_pb2.ConnectRequest(
                                result=scheduler_pb2.Result(
                                    execution_id=execution_id,
                                    outcome=types_pb2.OUTCOME_SUCCEEDED,
                                )
                            )
                        )
                elif kind == "result_ack":
                    self.finished += 1
                self._news.set()
        except asyncio.CancelledError:
            if beats is not None:
                beats.cancel()
            if self._stopping:
                await _goodbye(call)
            raise
        except grpc.aio.AioRpcError as exc:
            # A write that fails because the call has ended reads INTERNAL "Internal
            # error from Core" (grpc issue 36066), whatever status the server sent.
            return beats is not None, f"{exc.code().name} {exc.details()}"
        except (RuntimeError, asyncio.InvalidStateError) as exc:
            return beats is not None, str(exc)
        finally:
            if beats is not None:
                beats.cancel()


async def _heartbeats(call: Any, writing: asyncio.Lock, interval: float) -> None:
    # The first one at a random point of the interval: the phases of runners that
    # connected at different times, so that a window shorter than the interval still
    # sees the steady rate (streams / interval), not none at all.
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        async with writing:
            await call.write(scheduler_pb2.ConnectRequest(heartbeat=scheduler_pb2.Heartbeat()))
        await asyncio.sleep(interval)


async def _goodbye(call: Any) -> None:
    try:
        async with asyncio.timeout(2.0):
            await call.write(
                scheduler_pb2.ConnectRequest(goodbye=scheduler_pb2.Goodbye(reason="benchmark over"))
            )
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
        pass
    call.cancel()


# --- the throughput workload ------------------------------------------------------


def specs(count: int) -> list[types_pb2.JobSpec]:
    return [types_pb2.JobSpec(platform=PLATFORM, command=["true"]) for _ in range(count)]


async def submit_and_drain(
    admin: Client, pool: RunnerPool, jobs: int, batch: int
) -> tuple[float, list[float]]:
    """Submit ``jobs`` no-op jobs in batches of ``batch`` and wait until ``pool`` has
    reported every one, timed from the first submit to the last acknowledged result.
    Returns jobs/s and each job's submit->assign latency in seconds."""
    submitted: dict[int, float] = {}
    target = pool.finished + jobs
    started = pool.clock()
    for offset in range(0, jobs, batch):
        before = pool.clock()
        response = await admin.submit_many(specs(min(batch, jobs - offset)))
        for result in response.results:
            submitted[result.job.id] = before
    async with asyncio.timeout(max(60.0, jobs / 50)):
        await pool.until(lambda: pool.finished >= target)
    elapsed = pool.clock() - started
    return jobs / elapsed, [pool.assigned[j] - t for j, t in submitted.items()]


async def throughput_run(
    address: str, tokens: RoleTokens, jobs: int, runners: int, capacity: int, batch: int
) -> tuple[float, float, float]:
    """The throughput workload on a fresh pool of ``runners`` streams of ``capacity``
    slots. Returns jobs/s and the submit->assign p50 and p99 in ms."""
    async with client(address, tokens) as admin:
        pool = RunnerPool(metadata=admin.runner_metadata)
        await pool.connect(admin.channel, runners, capacity)
        rate, latencies = await submit_and_drain(admin, pool, jobs, batch)
        await pool.close()
    return rate, percentile(latencies, 0.50) * 1000, percentile(latencies, 0.99) * 1000
