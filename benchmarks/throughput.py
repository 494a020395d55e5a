"""End-to-end throughput and submit-to-assign latency of no-op jobs.

A `dispatcher serve` process (SQLite or PostgreSQL), R runner streams in this separate
process that accept each assignment and report success at once (no subprocess: this
measures the dispatcher, not fork/exec), N jobs submitted in batches.

    python -m benchmarks.throughput --jobs 5000 --runners 50 --database sqlite
    python -m benchmarks.throughput --database postgresql+psycopg2://postgres@127.0.0.1/bench

Prints the settings, then jobs/s and submit->assign p50/p99 for each run, and the
median (min-max) over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from dispatcher.v1 import admin_pb2, admin_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2
from tests.support.processes import dispatcher_server
from tests.support.tokens import RoleTokens, authenticated_channel

PLATFORM = "bench/noop"


async def noop_runner(
    address: str,
    tokens: RoleTokens,
    name: str,
    capacity: int,
    assigned: dict[int, float],
    done: asyncio.Event,
    total: int,
    finished: list[int],
) -> None:
    async with authenticated_channel(address, tokens) as channel:
        call = scheduler_pb2_grpc.SchedulerStub(channel).Connect()
        await call.write(
            scheduler_pb2.ConnectRequest(
                hello=scheduler_pb2.Hello(
                    name=name, platform=PLATFORM, capacity=capacity, version="bench"
                )
            )
        )
        beats: asyncio.Task[None] | None = None
        while not done.is_set():
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("message")
            if kind == "welcome" and beats is None:
                # Like a real runner: alive as long as it says so.
                interval = message.welcome.heartbeat_interval.ToTimedelta().total_seconds()
                beats = asyncio.create_task(_heartbeats(call, interval or 10.0))
            if kind == "assign":
                execution_id = message.assign.execution_id
                assigned[message.assign.job.id] = time.perf_counter()
                await call.write(
                    scheduler_pb2.ConnectRequest(
                        accept=scheduler_pb2.Accept(execution_id=execution_id)
                    )
                )
                await call.write(
                    scheduler_pb2.ConnectRequest(
                        result=scheduler_pb2.Result(
                            execution_id=execution_id, outcome=types_pb2.OUTCOME_SUCCEEDED
                        )
                    )
                )
            elif kind == "result_ack":
                finished[0] += 1
                if finished[0] >= total:
                    done.set()
        if beats is not None:
            beats.cancel()
        await call.write(
            scheduler_pb2.ConnectRequest(goodbye=scheduler_pb2.Goodbye(reason="benchmark over"))
        )
        call.cancel()


async def _heartbeats(call: Any, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await call.write(scheduler_pb2.ConnectRequest(heartbeat=scheduler_pb2.Heartbeat()))


async def one_run(
    address: str, tokens: RoleTokens, jobs: int, runners: int, capacity: int, batch: int
) -> tuple[float, float, float]:
    assigned: dict[int, float] = {}
    submitted: dict[int, float] = {}
    done = asyncio.Event()
    finished = [0]
    tasks = [
        asyncio.create_task(
            noop_runner(address, tokens, f"bench-{i}", capacity, assigned, done, jobs, finished)
        )
        for i in range(runners)
    ]
    async with authenticated_channel(address, tokens) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        await asyncio.sleep(0.5)  # let the streams say hello before the clock starts
        started = time.perf_counter()
        for offset in range(0, jobs, batch):
            specs = [
                types_pb2.JobSpec(platform=PLATFORM, command=["true"])
                for _ in range(min(batch, jobs - offset))
            ]
            before = time.perf_counter()
            response = await admin.SubmitJobs(admin_pb2.SubmitJobsRequest(specs=specs))
            for result in response.results:
                submitted[result.job.id] = before
        await asyncio.wait_for(done.wait(), timeout=max(60.0, jobs / 50))
        elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    latencies = sorted(assigned[j] - submitted[j] for j in submitted if j in assigned)
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return jobs / elapsed, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runners", type=int, default=50)
    parser.add_argument("--capacity", type=int, default=4, help="slots per runner stream")
    parser.add_argument("--batch", type=int, default=500, help="jobs per SubmitJobs call")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--database",
        default="sqlite",
        help="'sqlite' (a fresh file) or a PostgreSQL URL (its tables are used)",
    )
    args = parser.parse_args()
    print(
        f"throughput: {args.jobs} no-op jobs, {args.runners} runner streams x "
        f"{args.capacity} slots, batches of {args.batch}, {args.runs} runs, "
        f"database {args.database.split('@')[-1]}",
        flush=True,
    )
    rates, p50s, p99s = [], [], []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as workdir:
            url = (
                f"sqlite:///{Path(workdir) / 'bench.db'}"
                if args.database == "sqlite"
                else args.database
            )
            with dispatcher_server(url, Path(workdir)) as server:
                rate, p50, p99 = asyncio.run(
                    one_run(
                        server.address,
                        server.tokens,
                        args.jobs,
                        args.runners,
                        args.capacity,
                        args.batch,
                    )
                )
        rates.append(rate)
        p50s.append(p50)
        p99s.append(p99)
        print(
            f"  run {run}: {rate:,.0f} jobs/s; submit->assign p50 {p50:.1f} ms, p99 {p99:.1f} ms",
            flush=True,
        )
    print(
        f"median {statistics.median(rates):,.0f} jobs/s ({min(rates):,.0f}-{max(rates):,.0f}); "
        f"submit->assign p50 {statistics.median(p50s):.1f} ms, "
        f"p99 {statistics.median(p99s):.1f} ms"
    )


if __name__ == "__main__":
    sys.exit(main())
