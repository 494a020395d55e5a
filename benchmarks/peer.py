"""dispatcher and procrastinate side by side, on the same PostgreSQL, in the same run.

Each run gives each side a throwaway database on the tests' PostgreSQL server and
measures, in turn:

- idle latency: one job at a time on an idle system, from just before the submit to
  the job starting. procrastinate: ``defer_async`` -> the task body runs in the worker
  (a separate process, told by LISTEN/NOTIFY). dispatcher: ``SubmitJob`` -> the Assign
  reaches an idle runner stream (in this process, the server in another). The worker
  stamps time.monotonic(), this process reads it: on Linux both read the one
  system-wide CLOCK_MONOTONIC.
- throughput: N no-op jobs, timed from the first submit to the last job done.
  procrastinate: ``batch_defer_async`` in batches, one worker process (the
  ``procrastinate worker`` command) with concurrency C; done is its jobs' status
  ``succeeded`` in the database, polled every 10 ms. dispatcher: ``SubmitJobs`` in
  batches, R runner streams x S slots in a separate process from the server; done is
  every result acknowledged.

By default both sides have 50 jobs in flight (concurrency 50; 50 streams x 1 slot).
Needs the bench extra: python -m pip install -e ".[bench]".

    python -m benchmarks.peer
    python -m benchmarks.peer --jobs 200 --samples 20 --runs 1   # CI smoke

Prints the settings, then per run each side's jobs/s and idle p50/p99, then the
median (min-max) of each and the ratios dispatcher/procrastinate: throughput (the
target is >= 1.5) and idle p99 latency (the target is <= 1.0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from benchmarks.common import (
    RunnerPool,
    client,
    database,
    percentile,
    spread,
    submit_and_drain,
    workdir,
)
from benchmarks.latency import idle_latencies
from tests.support.processes import dispatcher_server
from tests.support.tokens import RoleTokens

try:
    import procrastinate

    from benchmarks.peer_tasks import DSN_VARIABLE, QUEUE, app, noop, stamp
except ImportError as exc:  # a missing extra
    raise SystemExit(
        f'{exc}: install the bench extra: python -m pip install -e ".[bench]"'
    ) from exc

ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.01


@dataclass
class Side:
    rate: float
    idle: list[float]

    def line(self) -> str:
        return (
            f"{self.rate:,.0f} jobs/s, idle p50 {percentile(self.idle, 0.5) * 1000:.2f} ms, "
            f"p99 {percentile(self.idle, 0.99) * 1000:.2f} ms"
        )


# --- procrastinate ----------------------------------------------------------------


class Worker:
    """A ``procrastinate worker`` process; ``started`` gives when a stamp job started."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self._started: dict[int, float] = {}
        self._news = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._process.stdout is not None
        async for raw in self._process.stdout:
            word, _, rest = raw.decode().strip().partition(" ")
            if word == "started":
                sample, when = rest.split()
                self._started[int(sample)] = float(when)
                self._news.set()
        self._news.set()

    async def started(self, sample: int) -> float:
        while sample not in self._started:
            if self._reader.done():
                raise RuntimeError("the procrastinate worker exited; see its log")
            self._news.clear()
            await self._news.wait()
        return self._started[sample]


@contextlib.asynccontextmanager
async def worker(dsn: str, concurrency: int, log: Path) -> AsyncIterator[Worker]:
    with log.open("w") as errors:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "procrastinate",
            "--app",
            "benchmarks.peer_tasks.app",
            "worker",
            "--queues",
            QUEUE,
            "--concurrency",
            str(concurrency),
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            cwd=ROOT,
            env={**os.environ, DSN_VARIABLE: dsn, "PYTHONPATH": str(ROOT)},
        )
    running = Worker(process)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        await running._reader


async def _succeeded(conn: psycopg.AsyncConnection[tuple[int]], task: str) -> int:
    cursor = await conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s AND status = 'succeeded'",
        (task,),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def procrastinate_side(dsn: str, work: Path, args: argparse.Namespace) -> Side:
    with app.replace_connector(procrastinate.PsycopgConnector(conninfo=dsn)):
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
            async with (
                worker(dsn, args.concurrency, work / "procrastinate-worker.log") as running,
                await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn,
            ):
                idle = []
                for i in range(args.warm_up + args.samples):
                    done = await _succeeded(conn, "stamp") + 1
                    before = time.monotonic()
                    await stamp.defer_async(sample=i)
                    async with asyncio.timeout(30.0):
                        started = await running.started(i)
                        # Polled: the database is where a job is seen done.
                        while await _succeeded(conn, "stamp") < done:  # noqa: ASYNC110
                            await asyncio.sleep(0.001)
                    if i >= args.warm_up:
                        idle.append(started - before)
                    await asyncio.sleep(args.pause)
                begun = time.monotonic()
                for offset in range(0, args.jobs, args.batch):
                    count = min(args.batch, args.jobs - offset)
                    await noop.batch_defer_async(*({} for _ in range(count)))
                async with asyncio.timeout(max(60.0, args.jobs / 50)):
                    while await _succeeded(conn, "noop") < args.jobs:  # noqa: ASYNC110
                        await asyncio.sleep(POLL_SECONDS)
                rate = args.jobs / (time.monotonic() - begun)
    return Side(rate, idle)


# --- dispatcher -------------------------------------------------------------------


async def dispatcher_side(address: str, tokens: RoleTokens, args: argparse.Namespace) -> Side:
    async with client(address, tokens) as admin:
        pool = RunnerPool(clock=time.monotonic, metadata=admin.runner_metadata)
        await pool.connect(admin.channel, args.runners, args.capacity)
        idle = await idle_latencies(admin, pool, args.samples, args.pause, args.warm_up)
        rate, _ = await submit_and_drain(admin, pool, args.jobs, args.batch)
        await pool.close()
    return Side(rate, idle)


def libpq(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a libpq connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000, help="no-op jobs per throughput run")
    parser.add_argument("--batch", type=int, default=500, help="jobs per (batch) submit")
    parser.add_argument("--samples", type=int, default=300, help="idle latency samples")
    parser.add_argument("--warm-up", type=int, default=20, help="idle jobs not counted")
    parser.add_argument(
        "--pause", type=float, default=0.01, help="idle: seconds between one job and the next"
    )
    parser.add_argument("--concurrency", type=int, default=50, help="procrastinate worker")
    parser.add_argument("--runners", type=int, default=50, help="dispatcher runner streams")
    parser.add_argument("--capacity", type=int, default=1, help="slots per runner stream")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print(
        f"peer: {args.jobs} no-op jobs in batches of {args.batch}; idle latency over "
        f"{args.samples} jobs (+{args.warm_up} warm-up, {args.pause * 1000:.0f} ms apart); "
        f"procrastinate {procrastinate.__version__}: one worker process, concurrency "
        f"{args.concurrency}; dispatcher: {args.runners} runner streams x {args.capacity} "
        f"slots; PostgreSQL (a throwaway database per side and run); {args.runs} runs",
        flush=True,
    )
    theirs: list[Side] = []
    ours: list[Side] = []
    for run in range(1, args.runs + 1):
        with workdir() as work, database("postgresql", "peer_procrastinate", work) as url:
            theirs.append(asyncio.run(procrastinate_side(libpq(url), work, args)))
        with (
            workdir() as work,
            database("postgresql", "peer_dispatcher", work) as url,
            dispatcher_server(url, work) as server,
        ):
            ours.append(asyncio.run(dispatcher_side(server.address, server.tokens, args)))
        print(f"  run {run}: procrastinate {theirs[-1].line()}", flush=True)
        print(f"  run {run}: dispatcher    {ours[-1].line()}", flush=True)

    def figures(sides: list[Side]) -> str:
        p50 = [percentile(s.idle, 0.5) * 1000 for s in sides]
        p99 = [percentile(s.idle, 0.99) * 1000 for s in sides]
        return (
            f"{spread([s.rate for s in sides], '{:,.0f}')} jobs/s; idle p50 "
            f"{spread(p50, '{:.2f}', ' ms')}, p99 {spread(p99, '{:.2f}', ' ms')}"
        )

    print(f"median procrastinate: {figures(theirs)}")
    print(f"median dispatcher:    {figures(ours)}")
    rate_ratio = statistics.median(s.rate for s in ours) / statistics.median(s.rate for s in theirs)
    p99_ratio = statistics.median(percentile(s.idle, 0.99) for s in ours) / statistics.median(
        percentile(s.idle, 0.99) for s in theirs
    )
    print(
        f"dispatcher/procrastinate: throughput {rate_ratio:.2f} (target >= 1.5); "
        f"idle p99 latency {p99_ratio:.2f} (target <= 1.0)"
    )


if __name__ == "__main__":
    main()
