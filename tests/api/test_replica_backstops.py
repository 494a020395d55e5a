"""When a message from another replica never arrives (the notification connection was
down, or SQLite, where nothing is sent), the hub's look at the database carries it out
anyway: a session closed elsewhere ends its stream here, a cancel or a drain asked
elsewhere reaches the runner here. A real server and a raw runner stream; "another
replica" is the use cases on the same database with another replica id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from dispatcher.app import Server
from dispatcher.lifecycle.fleet import Fleet
from dispatcher.store.database import Database
from dispatcher.v1 import admin_pb2, scheduler_pb2, types_pb2
from tests.support.server import RawRunner, admin, connect_runner, open_channel, running_server
from tests.support.services import Services, services


@asynccontextmanager
async def elsewhere(database_url: str) -> AsyncIterator[Services]:
    db = Database(database_url)
    try:
        async with services(db, replica_id="elsewhere") as other:
            yield other
    finally:
        db.close()


async def next_of_kind(runner: RawRunner, kind: str) -> scheduler_pb2.ConnectResponse:
    while True:
        message = await runner.next()
        if message.WhichOneof("message") == kind:
            return message


async def running_job(server: Server, channel: grpc.aio.Channel) -> tuple[RawRunner, int, int]:
    runner, _ = await connect_runner(channel, "r1")
    spec = types_pb2.JobSpec(platform="linux/x86_64", command=["true"])
    response = await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))
    assign = (await next_of_kind(runner, "assign")).assign
    await runner.send(accept=scheduler_pb2.Accept(execution_id=assign.execution_id))
    return runner, response.job.id, assign.execution_id


async def test_a_session_closed_elsewhere_ends_its_stream_here(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        elsewhere(database_url) as other,
    ):
        runner, _ = await connect_runner(channel, "r1")
        eviction = await Fleet(other.ctx, other.sessions).evict("r1", actor="op", reason="")
        assert eviction.closed_sessions == 1
        await server.hub.look()
        assert await runner.call.read() is grpc.aio.EOF
        assert server.hub.live_sessions == 0


async def test_a_cancel_asked_elsewhere_reaches_the_runner_here(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        elsewhere(database_url) as other,
    ):
        runner, job_id, execution_id = await running_job(server, channel)
        _, order = await other.jobs.cancel(job_id, actor="op", reason="not wanted")
        assert order is not None
        await server.hub.look()
        cancel = (await next_of_kind(runner, "cancel")).cancel
        assert cancel.execution_id == execution_id


async def test_a_drain_asked_elsewhere_reaches_the_runner_here(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        elsewhere(database_url) as other,
    ):
        runner, _ = await connect_runner(channel, "r1")
        await other.sessions.set_draining("r1", True, "maintenance")
        await server.hub.look()
        assert (await next_of_kind(runner, "drain")).WhichOneof("message") == "drain"


async def test_an_undrain_asked_elsewhere_after_a_drain_here_reaches_the_runner(
    database_url: str,
) -> None:
    """A look that finds the database as the last one did skips the streams; one that
    finds the drains changed (the undrain's message never came) still applies them."""
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        elsewhere(database_url) as other,
    ):
        runner, _ = await connect_runner(channel, "r1")
        await admin(channel).DrainRunner(admin_pb2.DrainRunnerRequest(name="r1", reason="disk"))
        assert (await next_of_kind(runner, "drain")).WhichOneof("message") == "drain"
        await server.hub.look()
        await server.hub.look()  # nothing new: the stream stays drained
        spec = types_pb2.JobSpec(platform="linux/x86_64", command=["true"])
        waiting = await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))
        assert waiting.job.state == types_pb2.JOB_STATE_QUEUED
        await other.sessions.set_draining("r1", False, "")
        await server.hub.look()
        assign = (await next_of_kind(runner, "assign")).assign
        assert assign.job.id == waiting.job.id
