"""An idle server's due loop and deadline sweep sleep (a minute here), yet what they
must do still happens on time, on SQLite and PostgreSQL: a job due later is queued when
due, a job waiting behind a cancelled one is queued at once, an idle runner's silence
and an assignment never accepted are judged at their deadlines."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher.app import Server
from dispatcher.v1 import admin_pb2, scheduler_pb2, types_pb2
from tests.support.eventually import eventually
from tests.support.server import admin, connect_runner, open_channel, running_server

LINUX = "linux/x86_64"
ASLEEP = timedelta(minutes=1)


def sleep_long(server: Server) -> None:
    """Make both loops' longest sleep a minute, and let them take it now."""
    server.hub.timing = replace(server.hub.timing, due_backstop=ASLEEP, sweep_idle=ASLEEP)
    server.hub.wake_due()
    server.hub.wake_sweep()


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(
        database_url,
        idle_heartbeat_timeout_seconds=2.0,
        heartbeat_timeout_seconds=1.0,
        accept_timeout_seconds=1.0,
    ) as built:
        sleep_long(built)
        await asyncio.sleep(0.3)  # both loops ran, and sleep
        yield built


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(server) as ch:
        yield ch


async def submit(channel: grpc.aio.Channel, **kw: object) -> int:
    spec = types_pb2.JobSpec(platform=LINUX, command=["true"], **kw)  # type: ignore[arg-type]
    response = await admin(channel).SubmitJobs(admin_pb2.SubmitJobsRequest(specs=[spec]))
    return int(response.results[0].job.id)


async def state(channel: grpc.aio.Channel, job_id: int) -> str:
    job = await admin(channel).GetJob(admin_pb2.GetJobRequest(id=job_id))
    return str(types_pb2.JobState.Name(job.job.state))


async def test_a_job_due_later_is_queued_when_due(
    server: Server, channel: grpc.aio.Channel
) -> None:
    due = Timestamp()
    due.FromDatetime(datetime.now(UTC) + timedelta(seconds=1.5))
    job_id = await submit(channel, not_before=due)
    assert await state(channel, job_id) == "JOB_STATE_NOTICED"
    # The submit's wake-up is spent: only the due time wakes the loop now.
    await eventually(lambda: 0 < server.hub.due_sleeps_for < 1.5)
    await eventually(lambda: _is(channel, job_id, "JOB_STATE_QUEUED"), timeout=5)


async def test_a_job_behind_a_cancelled_one_is_queued_at_once(
    server: Server, channel: grpc.aio.Channel
) -> None:
    first = await submit(channel, dedupe_key="upload-1")
    second = await submit(channel, dedupe_key="upload-1")
    assert await state(channel, second) == "JOB_STATE_NOTICED"  # waits behind the first
    # The submits' own wake-ups are spent: the due loop sleeps.
    await eventually(lambda: 30 < server.hub.due_sleeps_for < math.inf)
    await admin(channel).CancelJob(admin_pb2.CancelJobRequest(id=first, reason="wrong"))
    # A cancel calls no wake-up of its own: the job's end tells the due loop.
    await eventually(lambda: _is(channel, second, "JOB_STATE_QUEUED"), timeout=5)


async def test_an_idle_runner_is_judged_silent_at_its_deadline(
    channel: grpc.aio.Channel,
) -> None:
    runner, _ = await connect_runner(channel, "quiet")
    opened = time.monotonic()
    # It says nothing more: its stream ends once the idle timeout (2 s) has passed.
    async with asyncio.timeout(10):
        while await runner.call.read() is not grpc.aio.EOF:
            pass
    assert 1.5 < time.monotonic() - opened < 6


async def test_an_assignment_never_accepted_goes_back_at_its_deadline(
    channel: grpc.aio.Channel,
) -> None:
    runner, _ = await connect_runner(channel, "slow")

    async def heartbeats() -> None:  # alive (heartbeat timeout 1 s), only slow to accept
        while True:
            await runner.send(heartbeat=scheduler_pb2.Heartbeat())
            await asyncio.sleep(0.2)

    beating = asyncio.create_task(heartbeats())
    try:
        job_id = await submit(channel)
        assign = (await runner.next()).assign
        assert assign.job.id == job_id
        assigned = time.monotonic()
        # Never accepted: after the accept timeout (1 s) the runner is told to stop.
        cancel = await runner.next()
        assert cancel.WhichOneof("message") == "cancel"
        assert cancel.cancel.execution_id == assign.execution_id
        assert 0.9 < time.monotonic() - assigned < 4
    finally:
        beating.cancel()
        runner.call.cancel()


async def _is(channel: grpc.aio.Channel, job_id: int, wanted: str) -> bool:
    return await state(channel, job_id) == wanted
