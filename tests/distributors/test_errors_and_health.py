"""The error rules of the adapter contract and backend health (SPEC §7, §3, §10): a
transient run failure marks the backend down (its jobs wait, ExplainJob says since when)
until a probe finds it up; a permanent one makes the job NOT_FOR_US; a task the backend
forgot is a lost execution after the settle time."""

from __future__ import annotations

from dispatcher.distributors.contract import PermanentError, TransientError
from dispatcher.v1 import admin_pb2, distributor_pb2, distributor_pb2_grpc, types_pb2
from tests.support.backends import farm
from tests.support.eventually import eventually
from tests.support.server import admin, open_channel


async def test_a_down_backend_holds_its_jobs_until_a_probe_finds_it_up(
    database_url: str,
) -> None:
    async with farm(database_url) as f, open_channel(f.server) as channel:
        fake = f.fake()
        fake.run_errors = [TransientError("connection refused")] * 3
        fake.probe_errors = [TransientError("still refused")] * 2
        stub = admin(channel)
        spec = types_pb2.JobSpec(platform="p", distributor="fake", command=["b"])
        job_id = (await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id

        async def explained_down() -> admin_pb2.ExplainJobResponse | None:
            why = await stub.ExplainJob(admin_pb2.ExplainJobRequest(id=job_id))
            codes = [r.code for r in why.reasons]
            return why if "backend-down" in codes else None

        why = await eventually(explained_down)
        assert why.state == types_pb2.JOB_STATE_QUEUED
        [down] = [r for r in why.reasons if r.code == "backend-down"]
        assert down.text.startswith("backend down since ")
        # The backend's last error: the run's, or a probe's if one ran before this look.
        assert "connection refused" in down.text or "probe failed: still refused" in down.text
        listed = await distributor_pb2_grpc.DistributorStub(channel).ListDistributors(
            distributor_pb2.ListDistributorsRequest()
        )
        [info] = [d for d in listed.distributors if d.name == "fake"]
        assert not info.up
        assert info.down_since.seconds > 0

        # Two failed probes, then the backend answers: the job runs.
        async def building() -> bool:
            job = (await stub.GetJob(admin_pb2.GetJobRequest(id=job_id))).job
            return job.state == types_pb2.JOB_STATE_BUILDING

        await eventually(building, timeout=10)
        assert fake.probe_errors == []
        job = (await stub.GetJob(admin_pb2.GetJobRequest(id=job_id))).job
        kinds = [e.kind for e in job.events]
        assert kinds.count("refused") == 1  # given back once, counted as neither failure nor loss
        assert (job.failures, job.losses) == (0, 0)


async def test_a_permanent_run_error_makes_the_job_not_for_us(database_url: str) -> None:
    async with farm(database_url) as f, open_channel(f.server) as channel:
        f.fake().run_errors = [PermanentError("no such builder")]
        stub = admin(channel)
        spec = types_pb2.JobSpec(platform="p", distributor="fake", command=["b"])
        job_id = (await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id

        async def rejected() -> types_pb2.Job | None:
            job = (await stub.GetJob(admin_pb2.GetJobRequest(id=job_id))).job
            return job if job.state == types_pb2.JOB_STATE_NOT_FOR_US else None

        job = await eventually(rejected)
        assert "refused the job: no such builder" in job.info
        assert [e.kind for e in job.events][-1] == "rejected"


async def test_a_forgotten_task_is_lost_after_the_settle_time(database_url: str) -> None:
    async with farm(database_url) as f, open_channel(f.server) as channel:
        stub = admin(channel)
        spec = types_pb2.JobSpec(
            platform="p",
            distributor="fake",
            command=["b"],
            on_lost=types_pb2.ON_LOST_POLICY_REQUEUE,
        )
        job_id = (await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id

        async def execution(number: int) -> int:
            job = (await stub.GetJob(admin_pb2.GetJobRequest(id=job_id))).job
            ok = job.state == types_pb2.JOB_STATE_BUILDING and job.attempt == number
            return job.current_execution_id if ok else 0

        first = await eventually(lambda: execution(1))
        f.fake().forget(f.fake().token_of(first))
        second = await eventually(lambda: execution(2), timeout=10)
        job = (await stub.GetJob(admin_pb2.GetJobRequest(id=job_id))).job
        assert second != first
        assert job.losses == 1
        assert "reclaimed" in [e.kind for e in job.events]
        assert job.executions[0].outcome == types_pb2.OUTCOME_LOST
