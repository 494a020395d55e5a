"""Submit -> assign latency of no-op jobs, at idle and at half of peak throughput.

A `dispatcher serve` process (SQLite or PostgreSQL) and, in this separate process, R
no-op runner streams (those of benchmarks.throughput) and the submitter, so that one
clock (time.perf_counter) times both ends: from just before SubmitJob is sent to the
Assign arriving at a runner.

- idle: one job at a time; the next is submitted once the previous one's result is
  acknowledged and a short pause has passed, so every runner is idle and connected.
- loaded: the peak is measured first with a short throughput run through the same
  streams (or given with --rate); then a background loop submits at half that rate
  while single tagged jobs, one every --every seconds, are timed. The tagged jobs count
  in the offered rate.

    python -m benchmarks.latency --database sqlite
    python -m benchmarks.latency --database postgresql --samples 500
    python -m benchmarks.latency --samples 20 --peak-jobs 200 --runs 1   # CI smoke

Prints the settings, then for each run the idle p50/p99, the peak, the rate offered and
the loaded p50/p99, and the median (min-max) of each over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

from benchmarks.common import (
    DATABASE_HELP,
    PLATFORM,
    Client,
    RunnerPool,
    client,
    database,
    percentile,
    shown,
    specs,
    spread,
    submit_and_drain,
    workdir,
)
from dispatcher.v1 import types_pb2
from tests.support.processes import dispatcher_server
from tests.support.tokens import RoleTokens

WARM_UP = 20
# The background loop submits what is due this often, in one SubmitJobs call.
TICK_SECONDS = 0.01


@dataclass
class RunFigures:
    idle: list[float]
    peak: float
    offered: float
    loaded: list[float]


async def idle_latencies(
    admin: Client,
    pool: RunnerPool,
    samples: int,
    pause: float,
    warm_up: int = WARM_UP,
) -> list[float]:
    """One job at a time; the first ``warm_up`` are not counted."""
    latencies = []
    for i in range(warm_up + samples):
        finished = pool.finished + 1
        before = pool.clock()
        response = await admin.submit(_spec())
        async with asyncio.timeout(30.0):
            assigned = await pool.assign_of(response.job.id)
            await pool.until(lambda: pool.finished >= finished)  # noqa: B023 (awaited here)
        if i >= warm_up:
            latencies.append(assigned - before)
        await asyncio.sleep(pause)
    return latencies


async def loaded_latencies(
    admin: Client, pool: RunnerPool, samples: int, rate: float, every: float
) -> tuple[float, list[float]]:
    """Submit at ``rate`` jobs/s (tagged jobs included) while timing ``samples`` tagged
    jobs, one every ``every`` seconds. Returns the rate offered and the latencies."""
    background_rate = max(0.0, rate - 1 / every)
    finished = pool.finished
    sent = 0
    stop = asyncio.Event()

    async def background() -> None:
        nonlocal sent
        started = pool.clock()
        while not stop.is_set():
            due = int(background_rate * (pool.clock() - started)) - sent
            if due > 0:
                count = min(due, 1000)
                await admin.submit_many(specs(count))
                sent += count
            await asyncio.sleep(TICK_SECONDS)

    tagged: dict[int, float] = {}
    loop = asyncio.create_task(background())
    started = pool.clock()
    for i in range(samples):
        await asyncio.sleep(max(0.0, started + i * every - pool.clock()))
        before = pool.clock()
        response = await admin.submit(_spec())
        tagged[response.job.id] = before
    stop.set()
    await loop
    offered = (sent + samples) / (pool.clock() - started)
    async with asyncio.timeout(120.0):
        await pool.until(lambda: pool.finished >= finished + sent + samples)
    return offered, [pool.assigned[j] - t for j, t in tagged.items()]


def _spec() -> types_pb2.JobSpec:
    return types_pb2.JobSpec(platform=PLATFORM, command=["true"])


async def one_run(address: str, tokens: RoleTokens, args: argparse.Namespace) -> RunFigures:
    async with client(address, tokens) as admin:
        pool = RunnerPool(metadata=admin.runner_metadata)
        await pool.connect(admin.channel, args.runners, args.capacity)
        idle = await idle_latencies(admin, pool, args.samples, args.pause)
        peak = args.rate
        if peak is None:
            peak, _ = await submit_and_drain(admin, pool, args.peak_jobs, args.batch)
        offered, loaded = await loaded_latencies(
            admin, pool, args.samples, peak * args.load, args.every
        )
        await pool.close()
    return RunFigures(idle, peak, offered, loaded)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="timed jobs per phase")
    parser.add_argument("--runners", type=int, default=50)
    parser.add_argument("--capacity", type=int, default=4, help="slots per runner stream")
    parser.add_argument(
        "--pause", type=float, default=0.01, help="idle: seconds between one job and the next"
    )
    parser.add_argument(
        "--rate", type=float, help="peak jobs/s to take (default: measure it in each run)"
    )
    parser.add_argument("--peak-jobs", type=int, default=2000, help="jobs of the peak run")
    parser.add_argument("--batch", type=int, default=500, help="jobs per SubmitJobs (peak)")
    parser.add_argument("--load", type=float, default=0.5, help="fraction of the peak offered")
    parser.add_argument(
        "--every", type=float, default=0.02, help="loaded: seconds between tagged jobs"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default="sqlite", help=DATABASE_HELP)
    args = parser.parse_args()
    peak_how = (
        f"peak {args.rate:,.0f} jobs/s given"
        if args.rate
        else f"peak measured with {args.peak_jobs} jobs in batches of {args.batch}"
    )
    print(
        f"latency: submit->assign, {args.samples} samples per phase (+{WARM_UP} warm-up at "
        f"idle, {args.pause * 1000:.0f} ms apart), {args.runners} runner streams x "
        f"{args.capacity} slots; loaded at {args.load:.0%} of the {peak_how}, a tagged "
        f"job every {args.every * 1000:.0f} ms; {args.runs} runs, database "
        f"{shown(args.database)}",
        flush=True,
    )
    runs: list[RunFigures] = []
    for run in range(1, args.runs + 1):
        with (
            workdir() as work,
            database(args.database, "latency", work) as url,
            dispatcher_server(url, work) as server,
        ):
            figures = asyncio.run(one_run(server.address, server.tokens, args))
        runs.append(figures)
        print(
            f"  run {run}: idle p50 {percentile(figures.idle, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(figures.idle, 0.99) * 1000:.1f} ms; peak {figures.peak:,.0f} "
            f"jobs/s, offered {figures.offered:,.0f} jobs/s: p50 "
            f"{percentile(figures.loaded, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(figures.loaded, 0.99) * 1000:.1f} ms",
            flush=True,
        )

    def ms(phase: str, q: float) -> str:
        return spread([percentile(getattr(r, phase), q) * 1000 for r in runs], "{:.1f}", " ms")

    print(f"median idle:   p50 {ms('idle', 0.5)}, p99 {ms('idle', 0.99)}")
    print(
        f"median loaded: p50 {ms('loaded', 0.5)}, p99 {ms('loaded', 0.99)} at "
        f"{spread([r.offered for r in runs], '{:,.0f}')} jobs/s offered "
        f"(peak {spread([r.peak for r in runs], '{:,.0f}')} jobs/s)"
    )


if __name__ == "__main__":
    main()
