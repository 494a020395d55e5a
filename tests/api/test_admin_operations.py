"""RetryJob, RunJobNow, DeleteJob, EvictRunner, ListJobs by flavor and the replicas in
GetServerInfo over real gRPC, on SQLite and PostgreSQL: the happy path, and each refusal
with its code and message, changing nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from dispatcher.app import Server
from dispatcher.store import runners as runner_store
from dispatcher.store.database import Database
from dispatcher.v1 import admin_pb2, types_pb2
from tests.support.eventually import eventually
from tests.support.rpcs import snapshot
from tests.support.server import admin, connect_runner, open_channel, running_server

LINUX = "linux/x86_64"
# Nobody serves it: jobs stay where they are put.
NOWHERE = "test/nowhere"
NOT_STATE = frozenset({"tokens.last_used_at", "replicas.lease_until"})


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as built:
        yield built


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(server) as ch:
        yield ch


def spec(**kw: Any) -> types_pb2.JobSpec:
    kw.setdefault("platform", NOWHERE)
    return types_pb2.JobSpec(command=["true"], **kw)


async def submit(channel: grpc.aio.Channel, **kw: Any) -> types_pb2.Job:
    return (await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=spec(**kw)))).job


async def refused(
    database_url: str, call: Awaitable[Any], code: grpc.StatusCode, message: str
) -> None:
    """``call`` fails with ``code`` and a message containing ``message``; the database
    is as it was."""
    db = Database(database_url)
    try:
        before = snapshot(db, ignore=NOT_STATE)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code, caught.value.details()
        assert message in (caught.value.details() or "")
        assert snapshot(db, ignore=NOT_STATE) == before
    finally:
        db.close()


def future(seconds: float = 3600) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return ts


# --- RetryJob ---------------------------------------------------------------------------


async def test_retry_makes_a_new_job_and_leaves_the_original(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    original = await submit(channel, queue="retry", idempotency_key="once", priority=7)
    await stub.CancelJob(admin_pb2.CancelJobRequest(id=original.id, reason="oops"))

    retried = await stub.RetryJob(admin_pb2.RetryJobRequest(id=original.id, reason="again"))

    assert retried.retry_of == original.id
    new = retried.job
    assert new.id != original.id
    assert new.state == types_pb2.JOB_STATE_QUEUED
    assert (new.spec.queue, new.spec.priority) == ("retry", 7)
    assert new.spec.idempotency_key == ""  # the original still owns it
    old = (await stub.GetJob(admin_pb2.GetJobRequest(id=original.id))).job
    assert old.state == types_pb2.JOB_STATE_CANCELLED  # terminal states never change
    assert (old.events[-1].kind, old.events[-1].cause) == (
        "retried",
        f"retried as job {new.id}: again",
    )
    history = (await stub.GetJobHistory(admin_pb2.GetJobHistoryRequest(id=new.id))).events
    assert [e.kind for e in history] == ["submitted", "retry-of"]
    assert history[1].cause == f"retry of job {original.id} (CANCELLED): again"


async def test_retry_refusals(database_url: str, channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    waiting = await submit(channel)
    await refused(
        database_url,
        stub.RetryJob(admin_pb2.RetryJobRequest(id=waiting.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"job {waiting.id} is QUEUED: only FAILED, CANCELLED, IRRECOVERABLE or NOT_FOR_US",
    )
    await refused(
        database_url,
        stub.RetryJob(admin_pb2.RetryJobRequest(id=99999)),
        grpc.StatusCode.NOT_FOUND,
        "job 99999 does not exist",
    )
    await refused(
        database_url,
        stub.RetryJob(admin_pb2.RetryJobRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id is required",
    )


# --- RunJobNow --------------------------------------------------------------------------


async def test_run_now_makes_a_waiting_job_due(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    later = await submit(channel, not_before=future())
    assert later.state == types_pb2.JOB_STATE_NOTICED

    response = await stub.RunJobNow(admin_pb2.RunJobNowRequest(id=later.id))
    assert response.job.spec.not_before.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)

    async def queued() -> types_pb2.Job | None:
        job = (await stub.GetJob(admin_pb2.GetJobRequest(id=later.id))).job
        return job if job.state == types_pb2.JOB_STATE_QUEUED else None

    job = await eventually(queued)
    assert [e.kind for e in job.events] == ["submitted", "run-now", "queued"]


async def test_run_now_refusals(database_url: str, channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    runnable = await submit(channel)
    await refused(
        database_url,
        stub.RunJobNow(admin_pb2.RunJobNowRequest(id=runnable.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"job {runnable.id} is QUEUED: only a NOTICED job waits for its due time",
    )
    leader = await submit(channel, dedupe_key="k")
    follower = await submit(channel, dedupe_key="k")
    assert follower.state == types_pb2.JOB_STATE_NOTICED
    await refused(
        database_url,
        stub.RunJobNow(admin_pb2.RunJobNowRequest(id=follower.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"job {follower.id} is due already and waits for something else; "
        f"`dispatcher jobs explain {follower.id}`",
    )
    assert leader.state == types_pb2.JOB_STATE_QUEUED
    await refused(
        database_url,
        stub.RunJobNow(admin_pb2.RunJobNowRequest(id=99999)),
        grpc.StatusCode.NOT_FOUND,
        "job 99999 does not exist",
    )
    await refused(
        database_url,
        stub.RunJobNow(admin_pb2.RunJobNowRequest(id=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id is required",
    )


# --- DeleteJob --------------------------------------------------------------------------


async def test_delete_takes_a_pending_job_out_of_the_queue(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    pending = await submit(channel, queue="delete")
    deleted = await stub.DeleteJob(admin_pb2.DeleteJobRequest(id=pending.id, reason="typo"))
    assert deleted.job.state == types_pb2.JOB_STATE_CANCELLED
    assert deleted.job.info == "typo"
    history = (await stub.GetJobHistory(admin_pb2.GetJobHistoryRequest(id=pending.id))).events
    assert [(e.kind, e.to_state) for e in history][-1] == (
        "deleted",
        types_pb2.JOB_STATE_CANCELLED,
    )
    listed = await stub.ListJobs(
        admin_pb2.ListJobsRequest(queue="delete", states=[types_pb2.JOB_STATE_QUEUED])
    )
    assert list(listed.jobs) == []


async def test_delete_refusals(database_url: str, channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    runner, _ = await connect_runner(channel, "r1", platform=LINUX)
    building = await submit(channel, platform=LINUX)
    assert (await runner.next()).assign.job.id == building.id
    await refused(
        database_url,
        stub.DeleteJob(admin_pb2.DeleteJobRequest(id=building.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"job {building.id} is BUILDING: only a pending job (NOTICED or QUEUED) that never "
        "started can be deleted",
    )
    done = await submit(channel)
    await stub.CancelJob(admin_pb2.CancelJobRequest(id=done.id))
    await refused(
        database_url,
        stub.DeleteJob(admin_pb2.DeleteJobRequest(id=done.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"job {done.id} is CANCELLED",
    )
    await refused(
        database_url,
        stub.DeleteJob(admin_pb2.DeleteJobRequest(id=99999)),
        grpc.StatusCode.NOT_FOUND,
        "job 99999 does not exist",
    )
    await refused(
        database_url,
        stub.DeleteJob(admin_pb2.DeleteJobRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id is required",
    )
    runner.call.cancel()


async def test_a_job_that_ran_before_cannot_be_deleted(
    database_url: str, channel: grpc.aio.Channel
) -> None:
    stub = admin(channel)
    runner, _ = await connect_runner(channel, "r1", platform=LINUX)
    job = await submit(channel, platform=LINUX, on_lost=types_pb2.ON_LOST_POLICY_REQUEUE)
    assert (await runner.next()).assign.job.id == job.id
    await stub.DrainRunner(admin_pb2.DrainRunnerRequest(name="r1"))
    await stub.EvictRunner(admin_pb2.EvictRunnerRequest(name="r1"))  # requeued: attempt 1
    await refused(
        database_url,
        stub.DeleteJob(admin_pb2.DeleteJobRequest(id=job.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"job {job.id} has started before (attempt 1)",
    )


# --- EvictRunner ------------------------------------------------------------------------


async def test_evict_ends_the_stream_and_the_jobs_follow_their_policy(
    channel: grpc.aio.Channel,
) -> None:
    stub = admin(channel)
    runner, _ = await connect_runner(channel, "r1", platform=LINUX, capacity=2)
    requeue = await submit(channel, platform=LINUX, on_lost=types_pb2.ON_LOST_POLICY_REQUEUE)
    doomed = await submit(channel, platform=LINUX, on_lost=types_pb2.ON_LOST_POLICY_IRRECOVERABLE)
    assigned = {(await runner.next()).assign.job.id for _ in range(2)}
    assert assigned == {requeue.id, doomed.id}

    evicted = await stub.EvictRunner(admin_pb2.EvictRunnerRequest(name="r1", reason="wedged"))

    assert evicted.runner.state == types_pb2.RUNNER_STATE_OFFLINE
    assert evicted.closed_sessions == 1
    states = {j.id: j.state for j in evicted.jobs}
    assert states == {
        requeue.id: types_pb2.JOB_STATE_QUEUED,
        doomed.id: types_pb2.JOB_STATE_IRRECOVERABLE,
    }
    job = (await stub.GetJob(admin_pb2.GetJobRequest(id=requeue.id))).job
    assert job.events[-1].cause == "runner r1 lost: evicted by test-admin: wedged"
    assert await runner.call.read() is grpc.aio.EOF  # the stream ended
    listed = await stub.ListRunners(admin_pb2.ListRunnersRequest())
    assert [(r.name, r.state) for r in listed.runners] == [("r1", types_pb2.RUNNER_STATE_OFFLINE)]
    # Not banned: it may connect again, as a new session.
    again, _ = await connect_runner(channel, "r1", platform=LINUX)
    assert (await again.next()).assign.job.id == requeue.id
    again.call.cancel()


async def test_evict_refusals(database_url: str, channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    await refused(
        database_url,
        stub.EvictRunner(admin_pb2.EvictRunnerRequest(name="ghost")),
        grpc.StatusCode.NOT_FOUND,
        "runner 'ghost' is not known to this dispatcher",
    )
    await refused(
        database_url,
        stub.EvictRunner(admin_pb2.EvictRunnerRequest()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name is required",
    )


# --- ListJobs by flavor, server info -----------------------------------------------------


async def test_list_jobs_by_flavor(channel: grpc.aio.Channel) -> None:
    stub = admin(channel)
    # An unlabelled job goes to "small" (higher priority); only "big" serves "big".
    for name, labels, priority in (("small", [], 1), ("big", ["big"], 0)):
        flavor = types_pb2.Flavor(
            name=name, platform="test/flavors", labels=labels, priority=priority, enabled=True
        )
        await stub.AddFlavor(admin_pb2.AddFlavorRequest(flavor=flavor))
    big = await submit(channel, platform="test/flavors", labels=["big"])
    small = await submit(channel, platform="test/flavors")
    for flavor, job in (("big", big), ("small", small)):
        listed = await stub.ListJobs(admin_pb2.ListJobsRequest(flavor=flavor))
        assert [j.id for j in listed.jobs] == [job.id]
    none = await stub.ListJobs(admin_pb2.ListJobsRequest(flavor="absent"))
    assert list(none.jobs) == []


async def test_server_info_lists_the_live_replicas(
    server: Server, channel: grpc.aio.Channel, database_url: str
) -> None:
    now = datetime.now(UTC)
    db = Database(database_url)
    try:
        with db.transaction() as conn:  # another replica, alive, and a dead one
            runner_store.register_replica(conn, "other", "9.9", now, now + timedelta(hours=1))
            runner_store.register_replica(conn, "dead", "9.9", now, now - timedelta(seconds=1))
    finally:
        db.close()
    info = await admin(channel).GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert info.live_replicas == 2
    assert {r.id for r in info.replicas} == {server.replica_id, "other"}
    assert info.max_batch_size == 1000
    assert all(r.lease_until.ToDatetime() > r.started_at.ToDatetime() for r in info.replicas)
