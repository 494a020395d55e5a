"""Several dispatcher replicas on one PostgreSQL (SPEC §9, issue 7), with real processes:
work shared without double assignment, kill -9 and SIGSTOP of a replica, a cancel, a
drain and an eviction that cross replicas, and a rolling restart under load. Each test
prints what it measured (run with -s to see it). The full-size run is
``python -m benchmarks.replicas``."""

from __future__ import annotations

import itertools
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from sqlalchemy import select

from dispatcher.store.clock import database_now
from dispatcher.store.database import Database
from dispatcher.store.tables import executions, job_events, jobs, replicas, runner_sessions
from dispatcher.v1 import admin_pb2, types_pb2
from tests.support.faults import alive, wait_for
from tests.support.faults import submit as submit_to
from tests.support.processes import kill_hard
from tests.support.replicas import Cluster

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

PLATFORM = "e2e/replicas"
LEASE = 2.0
GRACE = 3.0
SETTINGS = {
    "heartbeat_interval_seconds": "0.5",
    "heartbeat_timeout_seconds": "5",
    "reattach_grace_seconds": str(GRACE),
    "replica_lease_seconds": str(LEASE),
    "cancel_grace_seconds": "2",
    "shutdown_grace_seconds": "1",
    "accept_timeout_seconds": "10",
}
REQUEUE = types_pb2.ON_LOST_POLICY_REQUEUE
IRRECOVERABLE = types_pb2.ON_LOST_POLICY_IRRECOVERABLE


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """Where replicas and runners log, jobs note that they ran (``ran/RUNNER``: one
    line "JOB EXECUTION" per run) and leave their pids (``pids/EXECUTION``)."""
    (tmp_path / "ran").mkdir()
    (tmp_path / "pids").mkdir()
    yield tmp_path
    for pidfile in (tmp_path / "pids").iterdir():  # no job outlives its test
        with suppress(ProcessLookupError, ValueError, PermissionError):
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)


def job(workdir: Path, seconds: float) -> list[str]:
    """A job that notes it ran, leaves its pid, then sleeps."""
    note = (
        f'echo "$DISPATCHER_JOB_ID $DISPATCHER_EXECUTION_ID" >> "{workdir}/ran/$DISPATCHER_RUNNER"'
    )
    pid = f'echo $$ > "{workdir}/pids/$DISPATCHER_EXECUTION_ID"'
    return ["sh", "-c", f"{note}; {pid}; exec sleep {seconds}"]


def runner_args(capacity: int) -> tuple[str, ...]:
    return ("--platform", PLATFORM, "--capacity", str(capacity), "--kill-grace", "1")


@dataclass
class Facts:
    """What the database says, read in one transaction."""

    states: dict[int, str]
    attempts: dict[int, int]
    created: dict[int, datetime]
    # (job id, execution id, session id, started, finished, outcome), by id
    executions: list[tuple[int, int, int | None, datetime, datetime | None, str | None]]
    replica_of_session: dict[int, str]
    events: list[tuple[int, str]]

    def executions_of(self, job_id: int) -> list[int]:
        return [e[1] for e in self.executions if e[0] == job_id]

    def replicas_that_ran(self) -> set[str]:
        return {self.replica_of_session[e[2]] for e in self.executions if e[2] is not None}


def read_facts(database_url: str) -> Facts:
    db = Database(database_url)
    try:
        with db.transaction() as conn:
            rows = conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.attempt, jobs.c.created_at)
            ).all()
            execs = conn.execute(
                select(
                    executions.c.job_id,
                    executions.c.id,
                    executions.c.session_id,
                    executions.c.started_at,
                    executions.c.finished_at,
                    executions.c.outcome,
                ).order_by(executions.c.id)
            ).all()
            sessions = conn.execute(select(runner_sessions.c.id, runner_sessions.c.replica_id))
            events = conn.execute(
                select(job_events.c.job_id, job_events.c.kind).order_by(job_events.c.id)
            ).all()
            return Facts(
                states={r.id: r.state for r in rows},
                attempts={r.id: r.attempt for r in rows},
                created={r.id: r.created_at for r in rows},
                executions=[tuple(e) for e in execs],
                replica_of_session={s.id: s.replica_id for s in sessions},
                events=[tuple(e) for e in events],
            )
    finally:
        db.close()


def lease_left(database_url: str, replica_id: str) -> float:
    """Seconds until the lease of ``replica_id`` runs out, by the database's clock."""
    db = Database(database_url)
    try:
        with db.transaction() as conn:
            until: datetime = conn.execute(
                select(replicas.c.lease_until).where(replicas.c.id == replica_id)
            ).scalar_one()
            return (until - database_now(conn)).total_seconds()
    finally:
        db.close()


def states_of(database_url: str, ids: list[int]) -> list[str]:
    states = read_facts(database_url).states
    return [states[i] for i in ids]


def runs(workdir: Path) -> Counter[int]:
    """How many times each job ran, as the jobs themselves noted it."""
    counted: Counter[int] = Counter()
    for path in (workdir / "ran").iterdir():
        for line in path.read_text().splitlines():
            counted[int(line.split()[0])] += 1
    return counted


def p99_submit_to_assign_ms(facts: Facts, ids: list[int]) -> float:
    first_start: dict[int, datetime] = {}
    for job_id, _, _, started, _, _ in facts.executions:
        first_start.setdefault(job_id, started)
    waits = sorted((first_start[i] - facts.created[i]).total_seconds() for i in ids)
    return waits[min(len(waits) - 1, int(len(waits) * 0.99))] * 1000


# --- sharing the work ---------------------------------------------------------------


def test_three_replicas_share_the_work_and_never_assign_a_job_twice(
    database_url: str, workdir: Path
) -> None:
    count = 600
    with Cluster(database_url, workdir, 3, SETTINGS) as cluster:
        cluster.start_runners([(f"r{i}", i % 3) for i in range(9)], *runner_args(4))
        started = time.monotonic()
        ids: list[int] = []
        for index in itertools.islice(itertools.cycle(range(3)), 6):
            with cluster.admin(index) as admin:  # every replica takes submissions
                ids += submit_to(admin, PLATFORM, job(workdir, 0), count // 6)
        wait_for(lambda: set(states_of(database_url, ids)) == {"SUCCEEDED"}, 120, 0.2)
        took = time.monotonic() - started
    facts = read_facts(database_url)
    doubly = [i for i in ids if len(facts.executions_of(i)) != 1]
    ran = runs(workdir)
    assert doubly == []
    assert [i for i in ids if ran[i] != 1] == []
    assert len(facts.replicas_that_ran()) == 3  # every replica's runners got work
    print(
        f"\nFIGURE 3 replicas x 3 runners: {count} jobs, 0 assigned twice, 0 run twice, "
        f"{count / took:.0f} jobs/s, p99 submit->assign "
        f"{p99_submit_to_assign_ms(facts, ids):.0f} ms"
    )


# --- a replica dies -----------------------------------------------------------------


def test_kill_9_of_a_replica_its_runners_re_attach_to_the_survivors(
    database_url: str, workdir: Path
) -> None:
    with Cluster(database_url, workdir, 3, SETTINGS) as cluster:
        with cluster.admin(1) as admin:
            ids = submit_to(admin, PLATFORM, job(workdir, 6), 10, IRRECOVERABLE)
        cluster.start_runners([(f"v{i}", 0) for i in range(10)], *runner_args(1))
        wait_for(lambda: states_of(database_url, ids) == ["BUILDING"] * 10, 60, 0.2)
        facts = read_facts(database_url)
        [victim_id] = {facts.replica_of_session[e[2]] for e in facts.executions if e[2]}
        cluster.kill(0)

        def re_attached() -> bool:
            now = read_facts(database_url)
            holders = {
                now.replica_of_session[e[2]] for e in now.executions if e[4] is None and e[2]
            }
            return len(now.executions) == 10 and bool(holders) and victim_id not in holders

        moved_after = wait_for(re_attached, GRACE + 5, 0.1)
        wait_for(lambda: set(states_of(database_url, ids)) == {"SUCCEEDED"}, 30, 0.2)
    facts = read_facts(database_url)
    assert {facts.attempts[i] for i in ids} == {1}  # re-attached, never run again
    assert all(len(facts.executions_of(i)) == 1 for i in ids)
    assert victim_id not in {
        facts.replica_of_session[e[2]] for e in facts.executions if e[2] is not None
    }
    print(
        f"\nFIGURE kill -9 of a replica holding 10 runners with BUILDING jobs: all 10 "
        f"re-attached to survivors {moved_after:.2f}s after the kill, 10 SUCCEEDED, 0 failed, "
        "0 run twice"
    )


def test_kill_9_of_a_replica_and_its_runners_decides_their_jobs_in_time(
    database_url: str, workdir: Path
) -> None:
    with Cluster(database_url, workdir, 3, SETTINGS) as cluster:
        with cluster.admin(1) as admin:
            requeue = submit_to(admin, PLATFORM, job(workdir, 60), 5, REQUEUE)
            doomed = submit_to(admin, PLATFORM, job(workdir, 60), 5, IRRECOVERABLE)
        every = requeue + doomed
        runners = cluster.start_runners([(f"g{i}", 0) for i in range(10)], *runner_args(1))
        wait_for(lambda: states_of(database_url, every) == ["BUILDING"] * 10, 60, 0.2)
        for runner in runners:
            kill_hard(runner)
        cluster.kill(0)
        killed_at = time.monotonic()
        wait_for(lambda: "BUILDING" not in states_of(database_url, every), LEASE + GRACE + 5, 0.1)
        decided_after = time.monotonic() - killed_at
        assert states_of(database_url, doomed) == ["IRRECOVERABLE"] * 5
        assert states_of(database_url, requeue) == ["QUEUED"] * 5
    assert decided_after <= LEASE + GRACE + 2, f"decided {decided_after:.2f}s after the kill"
    print(
        f"\nFIGURE kill -9 of a replica and its 10 runners: every job decided by its rule "
        f"{decided_after:.2f}s after the kill (bound: lease {LEASE:g} + grace {GRACE:g} + 2 s)"
    )


def test_a_replica_frozen_for_less_than_its_lease_reclaims_nothing(
    database_url: str, workdir: Path
) -> None:
    lease = 4.0
    frozen_for = 0.9 * lease
    settings = {**SETTINGS, "replica_lease_seconds": str(lease)}
    with Cluster(database_url, workdir, 3, settings) as cluster:
        with cluster.admin(1) as admin:
            # Long enough to outlive lease + grace, had the freeze cost the sessions.
            ids = submit_to(admin, PLATFORM, job(workdir, 12), 6, IRRECOVERABLE)
        cluster.start_runners([(f"f{i}", 0) for i in range(6)], *runner_args(1))
        wait_for(lambda: states_of(database_url, ids) == ["BUILDING"] * 6, 60, 0.2)
        with cluster.admin(0) as admin:
            frozen_id = admin.GetServerInfo(admin_pb2.GetServerInfoRequest()).replica_id
        # The worst moment: just before the replica renews its lease (every lease / 3),
        # so that the lease runs out during the freeze and the others detach its
        # sessions; it must take them back when it wakes up.
        wait_for(lambda: lease_left(database_url, frozen_id) < lease * 2 / 3 + 0.1, 10, 0.02)
        frozen = cluster.replicas[0].process
        frozen.send_signal(signal.SIGSTOP)
        try:
            time.sleep(frozen_for)  # the test is the pause itself
        finally:
            frozen.send_signal(signal.SIGCONT)
        wait_for(lambda: "BUILDING" not in states_of(database_url, ids), 40, 0.2)
    facts = read_facts(database_url)
    assert {facts.states[i] for i in ids} == {"SUCCEEDED"}
    lost = [e for e in facts.executions if e[5] == "LOST"]
    assert lost == []
    assert [kind for _, kind in facts.events if kind in ("reclaimed", "irrecoverable")] == []
    assert {facts.attempts[i] for i in ids} == {1}
    logs = "".join(p.read_text() for p in workdir.glob("replica-*.log"))
    lease_ran_out = "whose lease ran out detached" in logs
    print(
        f"\nFIGURE SIGSTOP of a replica for {frozen_for:.1f}s (lease {lease:g}s): "
        "0 premature reclaims, 6 of 6 jobs SUCCEEDED on their first execution "
        + (
            "(its lease ran out meanwhile: the others detached its sessions, it took them back)"
            if lease_ran_out
            else "(its lease held)"
        )
    )


# --- messages across replicas -------------------------------------------------------


def test_cancel_reaches_a_runner_on_another_replica_within_a_second(
    database_url: str, workdir: Path
) -> None:
    with Cluster(database_url, workdir, 3, SETTINGS) as cluster:
        cluster.start_runners([("c1", 1)], *runner_args(1))
        with cluster.admin(0) as admin:
            [job_id] = submit_to(admin, PLATFORM, job(workdir, 60), 1)
            wait_for(lambda: states_of(database_url, [job_id]) == ["BUILDING"], 30)
            [execution_id] = read_facts(database_url).executions_of(job_id)
            pidfile = workdir / "pids" / str(execution_id)
            wait_for(lambda: pidfile.exists() and bool(pidfile.read_text()), 20)
            pid = int(pidfile.read_text())
            facts = read_facts(database_url)
            holder = facts.replica_of_session[facts.executions[0][2]]  # type: ignore[index]
            cancelled_at = time.monotonic()
            admin.CancelJob(admin_pb2.CancelJobRequest(id=job_id, reason="not wanted"))
            took = wait_for(
                lambda: not alive(pid) and states_of(database_url, [job_id]) == ["CANCELLED"],
                1.0,
                0.02,
            )
            assert time.monotonic() - cancelled_at <= 1.0
            info = admin.GetServerInfo(admin_pb2.GetServerInfoRequest())
        assert info.replica_id != holder  # the cancel crossed replicas
    print(
        f"\nFIGURE cancel through another replica: the job's process gone and the job "
        f"CANCELLED in {took * 1000:.0f} ms"
    )


def test_drain_undrain_and_evict_reach_a_runner_on_another_replica(
    database_url: str, workdir: Path
) -> None:
    with Cluster(database_url, workdir, 3, SETTINGS) as cluster:
        [leaver] = cluster.start_runners([("leaver", 1)], *runner_args(1), "--exit-when-drained")
        cluster.start_runners([("idle", 1), ("evicted", 1)], *runner_args(1))
        with cluster.admin(0) as admin:

            def online(name: str) -> bool:
                runners = admin.ListRunners(admin_pb2.ListRunnersRequest()).runners
                return any(
                    r.name == name and r.state == types_pb2.RUNNER_STATE_ONLINE for r in runners
                )

            wait_for(lambda: all(map(online, ("leaver", "idle", "evicted"))), 30)
            # Drain through replica 0; the runner's stream is on replica 1: it leaves.
            admin.DrainRunner(admin_pb2.DrainRunnerRequest(name="leaver", reason="bye"))
            drained_at = time.monotonic()
            leaver.wait(10)
            left_after = time.monotonic() - drained_at

            # Drained through replica 0, a runner on replica 1 gets nothing ...
            for name in ("idle", "evicted"):
                admin.DrainRunner(admin_pb2.DrainRunnerRequest(name=name))
            [job_id] = submit_to(admin, PLATFORM, job(workdir, 0), 1)
            time.sleep(1.0)  # nothing must happen: there is no event to wait for
            assert states_of(database_url, [job_id]) == ["QUEUED"]
            # ... until it is undrained there.
            admin.UndrainRunner(admin_pb2.UndrainRunnerRequest(name="idle"))
            undrained_at = time.monotonic()
            wait_for(lambda: states_of(database_url, [job_id]) != ["QUEUED"], 5, 0.02)
            assigned_after = time.monotonic() - undrained_at

            # Evicted through replica 0: replica 1 ends the stream; the runner comes
            # back as a new session, on the next replica of its list.
            before = read_facts(database_url).replica_of_session
            evicted_at = time.monotonic()
            admin.EvictRunner(admin_pb2.EvictRunnerRequest(name="evicted", reason="test"))
            log = workdir / "runner-evicted.log"
            port = cluster.replicas[1].port
            ended_after = wait_for(lambda: f":{port} closed the stream" in log.read_text(), 5)
            assert time.monotonic() - evicted_at <= 5
            wait_for(lambda: online("evicted"), 20)
            after = read_facts(database_url).replica_of_session
            assert len(after) > len(before)
    print(
        f"\nFIGURE across replicas: drained runner left {left_after:.2f}s after the drain; "
        f"undrained runner got its job {assigned_after * 1000:.0f} ms after the undrain; "
        f"evicted runner's stream ended {ended_after * 1000:.0f} ms after the eviction"
    )


# --- rolling restart ----------------------------------------------------------------


class SteadyLoad:
    """Submits ``batch`` jobs every ``every`` seconds to whichever replica answers."""

    def __init__(self, cluster: Cluster, command: list[str], batch: int, every: float) -> None:
        self._cluster = cluster
        self._command = command
        self._batch = batch
        self._every = every
        self.ids: list[int] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-load")

    def __enter__(self) -> SteadyLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        turn = 0
        while not self._stop.wait(self._every):
            turn += 1
            replicas = self._cluster.replicas
            replica = replicas[turn % len(replicas)]
            if replica.server is None:
                continue
            try:
                with self._cluster.admin(replica.index) as admin:
                    self.ids += submit_to(admin, PLATFORM, self._command, self._batch)
            except (grpc.RpcError, RuntimeError):
                self.refused += 1  # that replica is going down: the next one takes it


def test_a_rolling_restart_of_three_replicas_under_load_fails_no_job(
    database_url: str, workdir: Path
) -> None:
    with Cluster(database_url, workdir, 3, SETTINGS) as cluster:
        cluster.start_runners([(f"w{i}", i % 3) for i in range(6)], *runner_args(2))
        # Jobs outlive the shutdown grace (1 s): streams are cut while they run.
        with SteadyLoad(cluster, job(workdir, 1.5), batch=4, every=0.5) as load:
            time.sleep(3)  # the load is what is being measured against
            started = time.monotonic()
            for index in range(3):
                assert cluster.stop(index) == 0
                cluster.start(index)
                time.sleep(2)
            restarted_in = time.monotonic() - started
        ids = load.ids
        wait_for(
            lambda: set(states_of(database_url, ids)) <= {"SUCCEEDED", "FAILED", "CANCELLED"},
            90,
            0.3,
        )
    facts = read_facts(database_url)
    failed = [i for i in ids if facts.states[i] != "SUCCEEDED"]
    ran = runs(workdir)
    twice = [i for i in ids if ran[i] > 1]
    again = [i for i in ids if len(facts.executions_of(i)) > 1]
    assert failed == []
    assert twice == []
    logs = "".join(p.read_text() for p in workdir.glob("replica-*.log"))
    reattached = sum(int(n) for n in re.findall(r"re-attached (\d+)\)", logs))
    print(
        f"\nFIGURE rolling restart of 3 replicas in {restarted_in:.1f}s under load: "
        f"{len(ids)} jobs, 0 failed, 0 run twice; {reattached} running jobs re-attached "
        f"on another replica, {len(again)} assigned again after an assignment was cut in "
        f"flight; {load.refused} submissions refused by a replica going down (sent to the "
        "next)"
    )
