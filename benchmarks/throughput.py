"""End-to-end throughput and submit-to-assign latency of no-op jobs.

A `dispatcher serve` process (SQLite or PostgreSQL), R runner streams in this separate
process that accept each assignment and report success at once (no subprocess: this
measures the dispatcher, not fork/exec), N jobs submitted in batches.

    python -m benchmarks.throughput --jobs 5000 --runners 50 --database sqlite
    python -m benchmarks.throughput --database postgresql
    python -m benchmarks.throughput --database postgresql+psycopg2://postgres@127.0.0.1/bench

Prints the settings, then jobs/s and submit->assign p50/p99 for each run, and the
median (min-max) over the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics

from benchmarks.common import DATABASE_HELP, database, shown, throughput_run, workdir
from tests.support.processes import dispatcher_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--runners", type=int, default=50)
    parser.add_argument("--capacity", type=int, default=4, help="slots per runner stream")
    parser.add_argument("--batch", type=int, default=500, help="jobs per SubmitJobs call")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default="sqlite", help=DATABASE_HELP)
    args = parser.parse_args()
    print(
        f"throughput: {args.jobs} no-op jobs, {args.runners} runner streams x "
        f"{args.capacity} slots, batches of {args.batch}, {args.runs} runs, "
        f"database {shown(args.database)}",
        flush=True,
    )
    rates, p50s, p99s = [], [], []
    for run in range(1, args.runs + 1):
        with (
            workdir() as work,
            database(args.database, "throughput", work) as url,
            dispatcher_server(url, work) as server,
        ):
            rate, p50, p99 = asyncio.run(
                throughput_run(
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
    main()
