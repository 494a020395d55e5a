"""The polling backstop (SPEC §7): a backend that never notifies still gets every job to a
terminal state, by get_status at poll_timeout after run and then every poll interval."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatcher.domain.states import Outcome
from dispatcher.v1 import admin_pb2, types_pb2
from tests.support.backends import POLL_INTERVAL, farm
from tests.support.eventually import eventually
from tests.support.server import admin, open_channel

JOBS = 12
POLL_TIMEOUT = 0.1  # the http and fake instances of tests/support/backends.py
# Time for the pass itself (a transaction or two on a shared 2-core machine, while the
# whole suite runs beside it: 0.47 s was seen there once). A poll that never came would
# leave the jobs BUILDING for good, far beyond it.
SLACK = 0.4


async def test_a_backend_that_never_notifies_is_polled_to_the_end(database_url: str) -> None:
    async with farm(database_url) as f, open_channel(f.server) as channel:
        stub = admin(channel)

        async def finished_after(job_id: int, since: datetime) -> float:
            job = (await stub.GetJob(admin_pb2.GetJobRequest(id=job_id))).job
            [at] = [e.at.ToDatetime(tzinfo=UTC) for e in job.events if e.kind == "finished"]
            return (at - since).total_seconds()

        # The http backend says "succeeded" to its first status request; nobody Notifies.
        f.http.initial = {"state": "succeeded", "info": "done"}
        http_ids = []
        for _ in range(JOBS):
            spec = types_pb2.JobSpec(platform="p", distributor="http", command=["b"])
            http_ids.append((await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id)

        async def http_tasks_done() -> bool:
            states = [
                (await stub.GetJob(admin_pb2.GetJobRequest(id=i))).job.state for i in http_ids
            ]
            return all(s == types_pb2.JOB_STATE_SUCCEEDED for s in states)

        await eventually(http_tasks_done, timeout=20, interval=0.25)

        # The fake ends its tasks later, all at once, and never pushes.
        spec = types_pb2.JobSpec(platform="p", distributor="fake", command=["b"])
        fake_ids = [
            (await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id for _ in range(4)
        ]

        async def all_building() -> list[types_pb2.Job] | None:
            jobs = [(await stub.GetJob(admin_pb2.GetJobRequest(id=i))).job for i in fake_ids]
            ok = all(j.state == types_pb2.JOB_STATE_BUILDING for j in jobs)
            return jobs if ok else None

        building = await eventually(all_building)
        await eventually(lambda: f.fake().status_calls >= 4)  # past the first poll
        ended_at = datetime.now(UTC)
        for job in building:
            f.fake().finish(f.fake().token_of(job.current_execution_id), Outcome.SUCCEEDED)

        async def fake_done() -> bool:
            jobs = [(await stub.GetJob(admin_pb2.GetJobRequest(id=i))).job for i in fake_ids]
            return all(j.state == types_pb2.JOB_STATE_SUCCEEDED for j in jobs)

        await eventually(fake_done, timeout=10, interval=0.25)
        after_end = max([await finished_after(i, ended_at) for i in fake_ids])

        # Figures: from run() (the "handed-over" event) to "finished" of each http job:
        # the first poll, poll_timeout after run, finds it ended.
        waits = []
        for job_id in http_ids:
            job = (await stub.GetJob(admin_pb2.GetJobRequest(id=job_id))).job
            at = {e.kind: e.at.ToDatetime() for e in job.events}
            waits.append((at["finished"] - at["handed-over"]).total_seconds())
        print(
            f"\npolling: http jobs run->finished max {max(waits):.3f} s "
            f"(bound {POLL_TIMEOUT + POLL_INTERVAL:.2f} s + {SLACK} s slack); "
            f"fake tasks ended->all SUCCEEDED {after_end:.3f} s (bound {POLL_INTERVAL} s + slack)"
        )
        assert max(waits) <= POLL_TIMEOUT + POLL_INTERVAL + SLACK
        assert after_end <= POLL_INTERVAL + SLACK


async def test_a_task_that_ends_before_its_token_is_recorded_is_polled_at_once(
    database_url: str,
) -> None:
    """A quick command ends (and asks for a poll) while run() is still under way: that poll
    cannot find the execution yet, so the dispatcher asks again once the token is recorded,
    rather than waiting for the poll timeout."""
    async with farm(database_url) as f, open_channel(f.server) as channel:
        stub = admin(channel)
        fake = f.fake()
        fake.poll_timeout = timedelta(seconds=60)
        fake.ends_during_run = Outcome.FAILED
        spec = types_pb2.JobSpec(platform="p", distributor="fake", command=["b"])
        ids = [
            (await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id for _ in range(5)
        ]

        async def all_failed() -> bool:
            jobs = [(await stub.GetJob(admin_pb2.GetJobRequest(id=i))).job for i in ids]
            return all(j.state == types_pb2.JOB_STATE_FAILED for j in jobs)

        await eventually(all_failed, timeout=10, interval=0.1)
