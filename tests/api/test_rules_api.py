"""The scheduling-rule RPCs over real gRPC: flavors and pressure (with a live watch),
schedules, back-offs, history and explain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from dispatcher.app import Server
from dispatcher.v1 import admin_pb2, scheduler_pb2, types_pb2
from tests.support.server import admin, connect_runner, open_channel, running_server

LINUX = "linux/x86_64"


@pytest.fixture
async def channel(database_url: str) -> AsyncIterator[grpc.aio.Channel]:
    server: Server
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
    ):
        yield channel


def job_spec(**kw: object) -> types_pb2.JobSpec:
    kw.setdefault("platform", LINUX)
    kw.setdefault("command", ["true"])
    return types_pb2.JobSpec(**kw)  # type: ignore[arg-type]


def seconds(n: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=n))
    return duration


async def test_flavors_and_a_pressure_watch(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    await stub.AddFlavor(
        admin_pb2.AddFlavorRequest(
            flavor=types_pb2.Flavor(name="gpu", platform=LINUX, labels=["gpu"], enabled=True)
        )
    )
    watch = stub.WatchPressures(admin_pb2.WatchPressuresRequest())
    first = await asyncio.wait_for(watch.read(), 5)
    assert [(p.flavor, p.value) for p in first.pressures] == [("gpu", 0)]
    submitted = await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec(labels=["gpu"])))
    assert submitted.job.flavor == "gpu"
    pushed = await asyncio.wait_for(watch.read(), 5)
    assert [(p.flavor, p.value, p.unfinished) for p in pushed.pressures] == [("gpu", 1, 1)]
    watch.cancel()

    refused = await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec(labels=["fpga"])))
    assert refused.job.state == types_pb2.JOB_STATE_NOT_FOR_US
    await stub.DisableFlavor(admin_pb2.DisableFlavorRequest(name="gpu"))
    explained = await stub.ExplainJob(admin_pb2.ExplainJobRequest(id=submitted.job.id))
    assert [r.code for r in explained.reasons] == ["flavor-disabled"]
    listed = await stub.ListFlavors(admin_pb2.ListFlavorsRequest())
    assert [(f.name, f.enabled) for f in listed.flavors] == [("gpu", False)]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.AddFlavor(
            admin_pb2.AddFlavorRequest(flavor=types_pb2.Flavor(name="gpu", platform=LINUX))
        )
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.DeleteFlavor(admin_pb2.DeleteFlavorRequest(name="nope"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert "flavor 'nope' does not exist" in (exc.value.details() or "")


async def test_schedules_over_grpc(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    created = await stub.CreateSchedule(
        admin_pb2.CreateScheduleRequest(name="import-x", job=job_spec(), interval=seconds(3600))
    )
    assert created.schedule.state == types_pb2.SCHEDULE_STATE_ACTIVE
    assert created.schedule.pending_job_id > 0
    job = (await stub.GetJob(admin_pb2.GetJobRequest(id=created.schedule.pending_job_id))).job
    assert job.schedule == "import-x"
    paused = await stub.PauseSchedule(admin_pb2.PauseScheduleRequest(name="import-x"))
    assert paused.schedule.state == types_pb2.SCHEDULE_STATE_PAUSED
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.RunScheduleNow(admin_pb2.RunScheduleNowRequest(name="import-x"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    resumed = await stub.ResumeSchedule(admin_pb2.ResumeScheduleRequest(name="import-x"))
    assert resumed.schedule.pending_job_id not in (0, job.id)
    listed = await stub.ListSchedules(admin_pb2.ListSchedulesRequest())
    assert [s.name for s in listed.schedules] == ["import-x"]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.CreateSchedule(
            admin_pb2.CreateScheduleRequest(name="bad", job=job_spec(), interval=seconds(0.5))
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "schedule.interval must be at least 1 second" in (exc.value.details() or "")


async def test_backoff_written_by_a_failure_then_cleared(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    failing = await stub.SubmitJob(
        admin_pb2.SubmitJobRequest(
            spec=job_spec(subject="repo-a", process="import", failure_backoff=seconds(600))
        )
    )
    runner, _ = await connect_runner(channel, "r1")
    assign = (await runner.next()).assign
    assert assign.job.id == failing.job.id
    await runner.send(
        result=scheduler_pb2.Result(
            execution_id=assign.execution_id, outcome=types_pb2.OUTCOME_FAILED, info="exit 1"
        )
    )
    await runner.next()  # the result ack
    waiting = await stub.SubmitJob(
        admin_pb2.SubmitJobRequest(spec=job_spec(subject="repo-a", process="import"))
    )
    assert waiting.job.state == types_pb2.JOB_STATE_NOTICED
    explained = await stub.ExplainJob(admin_pb2.ExplainJobRequest(id=waiting.job.id))
    assert [r.code for r in explained.reasons] == ["back-off"]
    [backoff] = (await stub.ListBackoffs(admin_pb2.ListBackoffsRequest())).backoffs
    assert (backoff.subject, backoff.job_id) == ("repo-a", failing.job.id)
    await stub.ClearBackoff(admin_pb2.ClearBackoffRequest(subject="repo-a", process="import"))
    assigned = (await runner.next()).assign
    assert assigned.job.id == waiting.job.id
    history = await stub.GetJobHistory(admin_pb2.GetJobHistoryRequest(id=waiting.job.id))
    assert [e.kind for e in history.events] == ["submitted", "queued", "started"]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ClearBackoff(admin_pb2.ClearBackoffRequest(subject="repo-a", process="x"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
