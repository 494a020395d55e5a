"""Several dispatcher replicas on one PostgreSQL (SPEC §9, issue 7), all real processes:
R `dispatcher serve` replicas, N `dispatcher-runner` processes spread over them (each
given every address, its home replica first), J jobs submitted in batches to the
replicas in turn. Each job is a real process that notes which job it was, so a job run
twice shows.

    python -m benchmarks.replicas --jobs 10000 --runners 30 --replicas 3
    python -m benchmarks.replicas --jobs 10000 --rate 100 --batch 50   # a steady load
    python -m benchmarks.replicas --rate 100 --batch 50 --job-seconds 1 --restart

--restart restarts every replica in turn during the run (SIGTERM, as a deploy does, then
the same replica again): a rolling restart under load.

Uses a throwaway database on the test PostgreSQL server (see tests/support/databases.py)
unless --database names one. Prints: jobs/s (first submission to last job ended),
submit-to-assign p50/p99 (a job's created_at to its first execution's start, both on
the database's clock: with every job submitted at once, that is mostly the time spent
waiting in the queue for a free slot; --rate submits at a steady pace instead), double
assignments (jobs with more than one execution, or run more than once by runners), lost
jobs (not ended when the run ends), failed jobs, and how the executions spread over the
replicas. Exits 1 when any job was assigned twice, lost or failed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import grpc
from sqlalchemy import func, select

from dispatcher.store.database import Database
from dispatcher.store.tables import executions, jobs, runner_sessions
from dispatcher.v1 import admin_pb2, types_pb2
from tests.support.databases import provide_server
from tests.support.replicas import Cluster

PLATFORM = "bench/replicas"
TERMINAL = ("SUCCEEDED", "FAILED", "IRRECOVERABLE", "CANCELLED", "NOT_FOR_US")
SETTINGS = {
    "shutdown_grace_seconds": "1",
    # Runners heartbeat every 2 s; 30 runners on a small machine may be starved a while.
    "heartbeat_interval_seconds": "2",
    "heartbeat_timeout_seconds": "30",
}


class RollingRestart(threading.Thread):
    """Restarts each replica in turn, ``pause`` seconds apart, starting after ``pause``."""

    def __init__(self, cluster: Cluster, pause: float) -> None:
        super().__init__(name="rolling-restart", daemon=True)
        self._cluster = cluster
        self._pause = pause
        self.took = 0.0
        self.statuses: list[int] = []

    def run(self) -> None:
        time.sleep(self._pause)
        started = time.monotonic()
        for replica in self._cluster.replicas:
            self.statuses.append(self._cluster.stop(replica.index))
            self._cluster.start(replica.index)
            print(f"  replica {replica.index} restarted", flush=True)
            time.sleep(self._pause)
        self.took = time.monotonic() - started


def _submit(cluster: Cluster, turn: int, specs: list[types_pb2.JobSpec]) -> list[int]:
    """Submit to the replica whose turn it is, or to the next one up; the idempotency
    keys make a retried batch return the jobs a lost answer created."""
    count = len(cluster.replicas)
    for attempt in range(4 * count):
        replica = cluster.replicas[(turn + attempt) % count]
        try:
            with cluster.admin(replica.index) as admin:
                response = admin.SubmitJobs(admin_pb2.SubmitJobsRequest(specs=specs))
            return [r.job.id for r in response.results]
        except (grpc.RpcError, RuntimeError):
            time.sleep(0.1)  # going down or starting: the next one takes it
    raise RuntimeError("no replica took the submission")


def run(url: str, args: argparse.Namespace, workdir: Path) -> int:
    ran_dir = workdir / "ran"
    ran_dir.mkdir()
    note = f'echo "$DISPATCHER_JOB_ID" >> "{ran_dir}/$DISPATCHER_RUNNER"'
    sleep = f"; sleep {args.job_seconds:g}" if args.job_seconds > 0 else ""
    command = ["sh", "-c", note + sleep]
    tag = uuid.uuid4().hex[:8]
    with Cluster(url, workdir, args.replicas, SETTINGS) as cluster:
        cluster.start_runners(
            [(f"bench-{i}", i % args.replicas) for i in range(args.runners)],
            "--platform",
            PLATFORM,
            "--capacity",
            str(args.capacity),
        )
        with cluster.admin(0) as admin:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                listed = admin.ListRunners(admin_pb2.ListRunnersRequest()).runners
                if sum(r.state == types_pb2.RUNNER_STATE_ONLINE for r in listed) == args.runners:
                    break
                time.sleep(0.2)
            else:
                print("not every runner connected within 120 s", file=sys.stderr)
                return 1
        print(f"  {args.runners} runners connected; submitting", flush=True)
        ids: list[int] = []
        restart = RollingRestart(cluster, args.restart_pause) if args.restart else None
        started = time.monotonic()
        if restart is not None:
            restart.start()
        for turn, offset in enumerate(range(0, args.jobs, args.batch)):
            if args.rate > 0:  # a steady load: this batch is due at offset / rate
                time.sleep(max(0.0, started + offset / args.rate - time.monotonic()))
            specs = [
                types_pb2.JobSpec(
                    platform=PLATFORM, command=command, idempotency_key=f"{tag}-{offset + i}"
                )
                for i in range(min(args.batch, args.jobs - offset))
            ]
            ids += _submit(cluster, turn, specs)
        submitted_in = time.monotonic() - started
        print(f"  {len(ids)} jobs submitted in {submitted_in:.1f} s", flush=True)
        deadline = time.monotonic() + max(120.0, args.jobs / 10)
        unfinished = len(ids)
        while time.monotonic() < deadline:
            unfinished = _unfinished(url, ids)
            if unfinished == 0:
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        if restart is not None:
            restart.join()
            print(
                f"  rolling restart of {args.replicas} replicas took {restart.took:.1f} s "
                f"(exit statuses {restart.statuses})",
                flush=True,
            )
    return _report(url, ids, ran_dir, elapsed, unfinished, args)


def _unfinished(url: str, ids: list[int]) -> int:
    db = Database(url)
    try:
        with db.transaction() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(jobs)
                    .where(jobs.c.id.between(min(ids), max(ids)), jobs.c.state.not_in(TERMINAL))
                ).scalar_one()
            )
    finally:
        db.close()


def _report(
    url: str,
    ids: list[int],
    ran_dir: Path,
    elapsed: float,
    unfinished: int,
    args: argparse.Namespace,
) -> int:
    wanted = set(ids)
    db = Database(url)
    try:
        with db.transaction() as conn:
            rows = conn.execute(select(jobs.c.id, jobs.c.state, jobs.c.created_at)).all()
            execs = conn.execute(
                select(executions.c.job_id, executions.c.started_at, runner_sessions.c.replica_id)
                .select_from(
                    executions.join(
                        runner_sessions, runner_sessions.c.id == executions.c.session_id
                    )
                )
                .order_by(executions.c.id)
            ).all()
    finally:
        db.close()
    state = {r.id: r.state for r in rows if r.id in wanted}
    created = {r.id: r.created_at for r in rows if r.id in wanted}
    first_start: dict[int, datetime] = {}
    per_job: Counter[int] = Counter()
    per_replica: Counter[str] = Counter()
    for job_id, started_at, replica in execs:
        if job_id in wanted:
            first_start.setdefault(job_id, started_at)
            per_job[job_id] += 1
            per_replica[replica] += 1
    ran: Counter[int] = Counter()
    for path in ran_dir.iterdir():
        ran.update(int(line) for line in path.read_text().split())
    assigned_twice = sum(1 for j in wanted if per_job[j] > 1)
    run_twice = sum(1 for j in wanted if ran[j] > 1)
    lost = len(wanted - state.keys()) + sum(1 for j in wanted if state.get(j) not in TERMINAL)
    failed = sum(1 for j in wanted if state.get(j) in TERMINAL and state[j] != "SUCCEEDED")
    waits = sorted(
        (first_start[j] - created[j]).total_seconds() * 1000 for j in wanted if j in first_start
    )

    def pct(q: float) -> float:
        return waits[min(len(waits) - 1, int(len(waits) * q))] if waits else float("nan")

    spread = ", ".join(str(n) for _, n in per_replica.most_common())
    print(
        f"replicas: {len(ids)} jobs, {args.runners} runners x {args.capacity} slots over "
        f"{args.replicas} replicas\n"
        f"  {len(ids) / elapsed:,.0f} jobs/s ({elapsed:.1f} s from first submission to last end)\n"
        f"  submit->assign p50 {pct(0.5):.0f} ms, p99 {pct(0.99):.0f} ms\n"
        f"  double assignments {assigned_twice + run_twice} "
        f"({assigned_twice} with more than one execution, {run_twice} run more than once)\n"
        f"  lost {lost} (not ended: {unfinished}), failed {failed}\n"
        f"  executions per replica: {spread}",
        flush=True,
    )
    return 0 if assigned_twice == run_twice == lost == failed == 0 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--runners", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--capacity", type=int, default=4, help="slots per runner")
    parser.add_argument("--batch", type=int, default=500, help="jobs per SubmitJobs call")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="jobs/s to submit at (default: all at once)"
    )
    parser.add_argument(
        "--job-seconds", type=float, default=0.0, help="how long each job runs (sleeps)"
    )
    parser.add_argument(
        "--restart", action="store_true", help="restart every replica in turn during the run"
    )
    parser.add_argument(
        "--restart-pause", type=float, default=5.0, help="seconds between two restarts"
    )
    parser.add_argument(
        "--database", default="", help="a PostgreSQL URL (default: a throwaway database)"
    )
    args = parser.parse_args()
    print(
        f"replicas: {args.replicas} replicas, {args.runners} runners x {args.capacity} "
        f"slots, {args.jobs} jobs in batches of {args.batch}"
        + (f" at {args.rate:g} jobs/s" if args.rate > 0 else " (all at once)"),
        flush=True,
    )
    server = None if args.database else provide_server()
    url = args.database or (server.create_database() if server else "")
    try:
        with tempfile.TemporaryDirectory() as workdir:
            return run(url, args, Path(workdir))
    finally:
        if server is not None:
            server.drop_database(url)
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
