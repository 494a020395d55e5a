"""The procrastinate app of benchmarks.peer: its two tasks, for the worker process
(``procrastinate --app benchmarks.peer_tasks.app worker``) and the deferring side."""

from __future__ import annotations

import os
import time

import procrastinate

# The worker process finds its database here; the deferring side replaces the connector.
DSN_VARIABLE = "DISPATCHER_BENCH_PEER_DSN"
QUEUE = "bench"

app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(conninfo=os.environ.get(DSN_VARIABLE, ""))
)


@app.task(name="noop", queue=QUEUE)
async def noop() -> None:
    """A job that does nothing."""


@app.task(name="stamp", queue=QUEUE)
async def stamp(sample: int) -> None:
    """Say when this job started, on the worker's standard output."""
    print(f"started {sample} {time.monotonic()!r}", flush=True)
