"""Claim cost against the length of the queue (SPEC §5.2, issue "scheduling rules").

For each queue length (1,000 and 1,000,000 QUEUED jobs by default), on a throwaway
PostgreSQL database: fill the queue with one INSERT ... SELECT, ANALYZE, then time
``Jobs.claim`` -- choose the next job in claim order and bind it to a runner session, one
transaction each -- and ``Jobs.submit`` of one job. Prints the median and p99 of each,
and the ratio of the claim medians (the target is <= 1.5: ordering is index-driven).

Then the submit section: ``Jobs.submit`` of a small batch (--submit-batch jobs, one
transaction), --batches times, into the same queue (which grows by those jobs); its
median and p99 per batch and per job, and the ratios of the submit medians.

    python -m benchmarks.claim_scale
    python -m benchmarks.claim_scale --sizes 100 1000 --claims 20 --batches 3   # CI smoke
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from sqlalchemy import text

from dispatcher.domain.clock import SystemClock
from dispatcher.domain.model import JobSpec, RunnerHello
from dispatcher.domain.validation import Limits
from dispatcher.lifecycle.batching import GroupCommit
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.jobs import Demand, Jobs
from dispatcher.lifecycle.sessions import Sessions
from dispatcher.store import migrate
from dispatcher.store.database import Database
from tests.support.databases import provide_server

PLATFORM = "bench/claim"

# Mixed priorities and due times, so the claim order has work to do.
FILL = text(
    """
    INSERT INTO jobs (queue, platform, labels, command, payload, priority, not_before,
                      coalesce_keys, on_lost, state, info, attempt, created_at, updated_at)
    SELECT 'bench', :platform, '[]', '["true"]', '', (n % 5),
           now() - make_interval(secs => (n % 1000)),
           '[]', 'REQUEUE', 'QUEUED', '', 0, now(), now()
    FROM generate_series(1, :n) AS n
    """
)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    url: str, size: int, claims: int, batch: int, batches: int
) -> tuple[list[float], list[float], list[float]]:
    """Times of each claim, single submit and batch submit, in seconds."""
    db = Database(url)
    migrate.upgrade(db)
    started = time.perf_counter()
    with db.transaction() as conn:
        conn.execute(FILL, {"platform": PLATFORM, "n": size})
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("ANALYZE jobs"))
    print(f"  filled {size:,} QUEUED jobs in {time.perf_counter() - started:.1f} s", flush=True)
    commits = GroupCommit(db)
    ctx = Context(db=db, clock=SystemClock(), limits=Limits(), replica_id="bench", commits=commits)
    commits.start()
    jobs, sessions = Jobs(ctx), Sessions(ctx)
    await sessions.register_replica()
    opened = await sessions.open(RunnerHello("bench", PLATFORM, frozenset(), capacity=1))
    demand = Demand(opened.session_id, "bench", PLATFORM, frozenset(), 1)
    claim_times, submit_times = [], []
    for _ in range(claims):
        t0 = time.perf_counter()
        [assignment] = await jobs.claim([demand])
        claim_times.append(time.perf_counter() - t0)
        assert assignment.job.state.value == "BUILDING"
        t0 = time.perf_counter()
        await jobs.submit([JobSpec(platform=PLATFORM, command=("true",))], actor="bench")
        submit_times.append(time.perf_counter() - t0)
    batch_times = []
    for _ in range(batches):
        specs = [JobSpec(platform=PLATFORM, command=("true",)) for _ in range(batch)]
        t0 = time.perf_counter()
        await jobs.submit(specs, actor="bench")
        batch_times.append(time.perf_counter() - t0)
    await commits.stop()
    db.close()
    return claim_times, submit_times, batch_times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 1_000_000])
    parser.add_argument("--claims", type=int, default=300)
    parser.add_argument("--submit-batch", type=int, default=100, help="jobs per batch submit")
    parser.add_argument("--batches", type=int, default=20, help="batch submits per size")
    args = parser.parse_args()
    server = provide_server()
    print(f"claim_scale: PostgreSQL, claims per size {args.claims}, sizes {args.sizes}")
    medians = []
    submits: list[tuple[int, list[float], list[float]]] = []
    try:
        for size in args.sizes:
            url = server.create_database()
            try:
                claim, submit, batch = await measure(
                    url, size, args.claims, args.submit_batch, args.batches
                )
            finally:
                server.drop_database(url)
            medians.append(statistics.median(claim))
            submits.append((size, submit, batch))
            print(
                f"  {size:>9,} waiting: claim median {statistics.median(claim) * 1000:.2f} ms, "
                f"p99 {_percentile(claim, 0.99) * 1000:.2f} ms; submit median "
                f"{statistics.median(submit) * 1000:.2f} ms, p99 "
                f"{_percentile(submit, 0.99) * 1000:.2f} ms",
                flush=True,
            )
    finally:
        server.stop()
    print(f"claim cost ratio largest/smallest: {medians[-1] / medians[0]:.2f} (target <= 1.5)")
    print(
        f"submit: single submits ({args.claims} per size) and {args.batches} batch submits "
        f"of {args.submit_batch} jobs per size, each one transaction"
    )
    for size, single, batch in submits:
        per_job = statistics.median(batch) / args.submit_batch
        print(
            f"  {size:>9,} waiting: single median {statistics.median(single) * 1000:.2f} ms, "
            f"p99 {_percentile(single, 0.99) * 1000:.2f} ms; batch of {args.submit_batch} "
            f"median {statistics.median(batch) * 1000:.2f} ms ({per_job * 1000:.3f} ms per "
            f"job), p99 {_percentile(batch, 0.99) * 1000:.2f} ms"
        )
    (_, first_single, first_batch), (_, last_single, last_batch) = submits[0], submits[-1]
    print(
        "submit cost ratio largest/smallest: single "
        f"{statistics.median(last_single) / statistics.median(first_single):.2f}, batch "
        f"{statistics.median(last_batch) / statistics.median(first_batch):.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
