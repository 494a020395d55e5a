"""Admin.WatchJobs over real gRPC, on SQLite and PostgreSQL: the starting cursor, live
changes, filters, refusals, and resuming after a disconnect with every event exactly
once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from dispatcher.app import Server
from dispatcher.v1 import admin_pb2, types_pb2
from tests.support.server import admin, open_channel, running_server

NOWHERE = "test/nowhere"


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as built:
        yield built


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(server) as ch:
        yield ch


async def submit(channel: grpc.aio.Channel, queue: str) -> types_pb2.Job:
    spec = types_pb2.JobSpec(platform=NOWHERE, command=["true"], queue=queue)
    return (await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job


async def events(call: Any, count: int) -> list[admin_pb2.WatchJobsResponse]:
    """The next ``count`` messages that carry an event (progress marks skipped)."""
    got: list[admin_pb2.WatchJobsResponse] = []
    async with asyncio.timeout(15):
        while len(got) < count:
            message = await call.read()
            assert message is not grpc.aio.EOF
            if message.HasField("event"):
                got.append(message)
    return got


async def test_a_watch_starts_now_and_sends_each_change(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    before = await submit(channel, "watch")
    call = stub.WatchJobs(admin_pb2.WatchJobsRequest(queue="watch"))
    first = await call.read()
    assert not first.HasField("event")  # where the watch starts: after `before`
    job = await submit(channel, "watch")
    await submit(channel, "elsewhere")
    await stub.CancelJob(admin_pb2.CancelJobRequest(id=job.id, reason="no"))
    got = await events(call, 2)
    assert [(m.event.job_id, m.event.kind) for m in got] == [
        (job.id, "submitted"),
        (job.id, "cancelled"),
    ]
    assert got[1].job.state == types_pb2.JOB_STATE_CANCELLED
    assert first.cursor < got[0].cursor < got[1].cursor
    assert got[1].cursor == got[1].event.id
    assert before.id not in {m.event.job_id for m in got}
    call.cancel()


async def test_a_state_filter_looks_at_what_each_event_did(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    call = stub.WatchJobs(admin_pb2.WatchJobsRequest(states=[types_pb2.JOB_STATE_CANCELLED]))
    start = (await call.read()).cursor
    job = await submit(channel, "states")
    await stub.CancelJob(admin_pb2.CancelJobRequest(id=job.id))
    [got] = await events(call, 1)
    assert (got.event.kind, got.event.to_state) == ("cancelled", types_pb2.JOB_STATE_CANCELLED)
    call.cancel()
    # A replay of the same stretch gives the same answer.
    replay = stub.WatchJobs(
        admin_pb2.WatchJobsRequest(states=[types_pb2.JOB_STATE_CANCELLED], after_cursor=start)
    )
    assert (await replay.read()).cursor == start
    [again] = await events(replay, 1)
    assert again.event == got.event
    replay.cancel()


async def test_a_resumed_watch_gets_every_event_once_in_order(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    queue = "resume"
    first = stub.WatchJobs(admin_pb2.WatchJobsRequest(queue=queue))
    start = (await first.read()).cursor
    done = asyncio.Event()

    async def keep_changing() -> None:
        # Changes go on the whole time: while watched, between the two watches, after.
        for _ in range(12):
            job = await submit(channel, queue)
            await submit(channel, "noise")
            await stub.CancelJob(admin_pb2.CancelJobRequest(id=job.id))
        done.set()

    changing = asyncio.create_task(keep_changing())
    seen = await events(first, 7)
    first.cancel()  # disconnect mid-stream
    await changing
    assert done.is_set()

    second = stub.WatchJobs(admin_pb2.WatchJobsRequest(queue=queue, after_cursor=seen[-1].cursor))
    assert (await second.read()).cursor == seen[-1].cursor
    listed = await stub.ListJobs(admin_pb2.ListJobsRequest(queue=queue))
    expected: list[int] = []
    for job in listed.jobs:
        history = await stub.GetJobHistory(admin_pb2.GetJobHistoryRequest(id=job.id))
        expected += [e.id for e in history.events if e.id > start]
    expected.sort()
    assert len(expected) == 24
    rest = await events(second, len(expected) - len(seen))
    delivered = [m.event.id for m in seen + rest]
    assert delivered == expected  # each once, in order, nothing lost across the gap
    assert [m.cursor for m in seen + rest] == delivered
    second.cancel()


@pytest.mark.parametrize(
    ("request_fields", "message"),
    [
        (
            {"after_cursor": -1},
            "after_cursor must be a cursor this server sent (0 or more), not -1",
        ),
        ({"after_cursor": 10**12}, "is ahead of the newest event"),
        ({"states": [99]}, "states: unknown value 99"),
    ],
)
async def test_bad_watch_requests_are_invalid_argument(
    channel: grpc.aio.Channel, request_fields: dict[str, Any], message: str
) -> None:
    call = admin(channel).WatchJobs(admin_pb2.WatchJobsRequest(**request_fields))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
