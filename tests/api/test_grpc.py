"""The three services over real gRPC on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import event, func, select

from dispatcher.app import Server
from dispatcher.domain.model import JobSpec
from dispatcher.store.database import Database
from dispatcher.store.tables import job_events, jobs
from dispatcher.v1 import (
    admin_pb2,
    distributor_pb2,
    distributor_pb2_grpc,
    scheduler_pb2,
    types_pb2,
)
from tests.support.eventually import eventually
from tests.support.server import RawRunner, admin, connect_runner, open_channel, running_server

LINUX = "linux/x86_64"


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as built:
        yield built


@pytest.fixture
async def channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(server) as ch:
        yield ch


def job_spec(*command: str, **kw: object) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(platform=LINUX, command=list(command or ("true",)), **kw)  # type: ignore[arg-type]


def row_counts(db: Database) -> tuple[int, int]:
    with db.transaction() as conn:
        return (
            conn.execute(select(func.count()).select_from(jobs)).scalar_one(),
            conn.execute(select(func.count()).select_from(job_events)).scalar_one(),
        )


async def test_concurrent_submits_never_fill_a_slot_twice(
    channel: grpc.aio.Channel, db: Database
) -> None:
    """Each submit may hand its job to an idle runner in its own transaction, while the
    assigner claims too: a runner with two slots still gets exactly two jobs."""
    runner, _ = await connect_runner(channel, "r1", capacity=2)
    responses = await asyncio.gather(
        *(
            admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec("true")))
            for _ in range(8)
        )
    )
    assert len({r.job.id for r in responses}) == 8
    first, second = await runner.next(), await runner.next()
    assert {first.WhichOneof("message"), second.WhichOneof("message")} == {"assign"}
    with pytest.raises(TimeoutError):  # no third assignment
        async with asyncio.timeout(0.5):
            await runner.call.read()

    def building() -> int:
        with db.transaction() as conn:
            query = select(func.count()).select_from(jobs).where(jobs.c.state == "BUILDING")
            return int(conn.execute(query).scalar_one())

    assert building() == 2
    runner.call.cancel()


def free_slots(server: Server) -> int:
    """Free slots of the hub's runners, once no claim holds any of them."""
    demands = server.hub.take_demands()
    server.hub.deliver(demands, [])
    return sum(d.slots for d in demands)


async def test_a_submit_reserves_only_the_slots_its_jobs_may_fill(
    server: Server, channel: grpc.aio.Channel
) -> None:
    """A submit hands its jobs to idle runners that may run them (SPEC §5.1), reserving
    no more slots than it has jobs: the other idle runners stay free for other claims."""
    r1, _ = await connect_runner(channel, "r1", capacity=2)
    r2, _ = await connect_runner(channel, "r2", capacity=2)
    hub = server.hub
    linux = JobSpec(platform=LINUX)
    await eventually(lambda: free_slots(server) == 4)  # the claims for new streams are over

    one = hub.take_demands([linux])
    assert [d.slots for d in one] == [1]
    three = hub.take_demands([linux] * 3)  # one slot of the four is reserved already
    assert sum(d.slots for d in three) == 3
    assert hub.take_demands([linux]) == []  # every slot reserved
    hub.deliver([*one, *three], [])
    assert sum(d.slots for d in hub.take_demands()) == 4  # the assigner asks for all

    hub.deliver(hub.take_demands(), [])
    assert hub.take_demands([JobSpec(platform=LINUX, labels=frozenset({"gpu"}))]) == []
    assert hub.take_demands([JobSpec(platform="other/arch")]) == []
    r1.call.cancel()
    r2.call.cancel()


async def finish(runner: RawRunner, assign: scheduler_pb2.Assign) -> None:
    await runner.send(accept=scheduler_pb2.Accept(execution_id=assign.execution_id))
    await runner.send(
        result=scheduler_pb2.Result(
            execution_id=assign.execution_id, outcome=types_pb2.OUTCOME_SUCCEEDED
        )
    )
    while (await runner.next()).WhichOneof("message") != "result_ack":
        pass


@contextlib.contextmanager
def claims_without_backstop(server: Server) -> Iterator[list[str]]:
    """The claim transactions the server starts meanwhile (each begins by locking its
    sessions), with the assigner's backstop made a minute long: only wake-ups claim."""
    server.hub.timing = replace(server.hub.timing, assign_sweep=timedelta(seconds=60))
    server.hub.wake()  # the assigner's next wait takes the new timing
    claims: list[str] = []

    def count_claims(*args: Any) -> None:
        if "FROM runner_sessions JOIN runners" in args[2]:
            claims.append(args[2])

    event.listen(server.db.engine, "before_cursor_execute", count_claims)
    try:
        yield claims
    finally:
        event.remove(server.db.engine, "before_cursor_execute", count_claims)


async def test_a_freed_slot_claims_only_when_a_job_may_wait(
    server: Server, channel: grpc.aio.Channel
) -> None:
    """A runner whose last claim found the queue dry claims nothing when its slot frees
    up (an idle farm pays no claim per finished build), yet a job that becomes claimable
    while it is dry (here: its coalesce key freed) reaches it at once, not at the
    backstop's next look (made a minute long here)."""
    with claims_without_backstop(server) as claims:
        a, _ = await connect_runner(channel, "a", labels=("a",))
        b, _ = await connect_runner(channel, "b", labels=("b",))
        stub = admin(channel)
        holder = job_spec(labels=["b"], coalesce_keys=["k"])
        await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=holder))
        on_b = (await b.next()).assign
        waiting = job_spec(labels=["a"], coalesce_keys=["k"])
        second = (await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=waiting))).job.id
        await eventually(lambda: free_slots(server) == 1)  # claims over: "a" is dry
        await finish(b, on_b)  # frees the key
        on_a = (await a.next()).assign
        assert on_a.job.id == second

        await finish(a, on_a)  # frees the key: a wake-up, one claim finds nothing
        await eventually(lambda: free_slots(server) == 2)
        plain = job_spec(labels=["a"])
        await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=plain))
        handed = (await a.next()).assign  # bound in the submit's own transaction
        claimed = len(claims)
        await finish(a, handed)  # frees a slot of a dry kind, and nothing else
        await asyncio.sleep(0.5)
        assert len(claims) == claimed
    a.call.cancel()
    b.call.cancel()


async def test_runners_of_a_dry_kind_claim_nothing_and_a_new_kind_claims_at_once(
    server: Server, channel: grpc.aio.Channel
) -> None:
    """Streams of a kind whose queue is dry connect without a claim each; a runner of
    another kind claims the job waiting for it as soon as it connects (the hub counts
    the kinds it holds, so that it skips the claim when every kind is dry)."""
    with claims_without_backstop(server) as claims:
        first, _ = await connect_runner(channel, "a0", labels=("a",))
        await eventually(lambda: len(claims) == 1)  # found the queue dry for "a"
        others = [(await connect_runner(channel, f"a{i}", labels=("a",)))[0] for i in (1, 2, 3)]
        await asyncio.sleep(0.3)
        assert len(claims) == 1
        stub = admin(channel)
        waiting = (
            await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec(labels=["c"])))
        ).job.id
        await eventually(lambda: free_slots(server) == 4)  # the claims it woke are over
        c, _ = await connect_runner(channel, "c", labels=("c",))
        assert (await c.next()).assign.job.id == waiting
    for runner in (first, *others, c):
        runner.call.cancel()


async def test_a_submit_binds_its_jobs_to_a_dry_runner_without_reading_the_queue(
    server: Server, channel: grpc.aio.Channel
) -> None:
    """On an idle farm a submit binds its job in its own transaction without a read of
    the queue (nothing older waits for a runner whose last claim found it dry); of the
    jobs of one batch, the first in claim order (SPEC §5.2) takes the free slot, and a
    job whose coalesce key a BUILDING job holds waits."""
    queue_reads: list[str] = []

    def count_reads(*args: Any) -> None:
        if "ORDER BY jobs.priority DESC" in args[2]:
            queue_reads.append(args[2])

    runner, _ = await connect_runner(channel, "r1", capacity=2)
    await eventually(lambda: free_slots(server) == 2)  # its first claim found nothing
    stub = admin(channel)
    event.listen(server.db.engine, "before_cursor_execute", count_reads)
    try:
        holder = await stub.SubmitJob(
            admin_pb2.SubmitJobRequest(spec=job_spec(coalesce_keys=["k"]))
        )
        assert holder.job.state == types_pb2.JOB_STATE_BUILDING
        batch = await stub.SubmitJobs(
            admin_pb2.SubmitJobsRequest(
                specs=[
                    job_spec(priority=1),
                    job_spec(priority=9, coalesce_keys=["k"]),  # held: waits
                    job_spec(priority=5),
                ]
            )
        )
        assert queue_reads == []
    finally:
        event.remove(server.db.engine, "before_cursor_execute", count_reads)
    states = [r.job.state for r in batch.results]
    assert states == [
        types_pb2.JOB_STATE_QUEUED,
        types_pb2.JOB_STATE_QUEUED,
        types_pb2.JOB_STATE_BUILDING,
    ]
    assigned = {(await runner.next()).assign.job.id for _ in range(2)}
    assert assigned == {holder.job.id, batch.results[2].job.id}
    runner.call.cancel()


async def test_a_single_job_for_an_idle_runner_is_bound_by_its_submit(
    server: Server, channel: grpc.aio.Channel
) -> None:
    """One job for an idle runner: BUILDING in the submit's reply, its Assign on the
    stream, its history the submit then the claim. On PostgreSQL the job, its events
    and its binding are one statement, which neither reads the queue nor leaves the job
    in it."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    runner, _ = await connect_runner(channel, "r1", labels=("gpu",))
    await eventually(lambda: free_slots(server) == 1)  # its first claim found nothing
    stub = admin(channel)
    event.listen(server.db.engine, "before_cursor_execute", record)
    try:
        reply = await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec(labels=["gpu"])))
    finally:
        event.remove(server.db.engine, "before_cursor_execute", record)
    assert reply.job.state == types_pb2.JOB_STATE_BUILDING
    assign = (await runner.next()).assign
    assert (assign.job.id, assign.execution_id) == (reply.job.id, reply.job.current_execution_id)
    assert list(assign.job.spec.labels) == ["gpu"]
    history = (await stub.GetJobHistory(admin_pb2.GetJobHistoryRequest(id=reply.job.id))).events
    assert [(e.kind, e.to_state) for e in history] == [
        ("submitted", types_pb2.JOB_STATE_QUEUED),
        ("started", types_pb2.JOB_STATE_BUILDING),
    ]
    assert history[1].execution_id == assign.execution_id
    assert not any("ORDER BY jobs.priority DESC" in s for s in statements)
    if server.db.is_postgresql:
        # The connection's prepared statement (prepared now, or by an earlier submit).
        assert sum(s.startswith("EXECUTE dispatcher_") for s in statements) == 1
        assert not [s for s in statements if "INSERT INTO jobs" in s and "PREPARE" not in s]
    else:
        assert sum("INSERT INTO jobs" in s for s in statements) == 1
    runner.call.cancel()


async def test_a_job_runs_on_a_runner_stream(channel: grpc.aio.Channel) -> None:
    runner, welcome = await connect_runner(channel, "r1")
    assert welcome.session_id > 0
    assert welcome.resume_token
    assert welcome.heartbeat_interval.seconds == 10
    submitted = await admin(channel).SubmitJob(
        admin_pb2.SubmitJobRequest(spec=job_spec("echo", "hello", queue="demo"))
    )
    assert submitted.created
    # An idle runner takes the job in the submit's own transaction, unless the
    # assigner's claim for the new stream held its slot at that moment.
    assert submitted.job.state in (types_pb2.JOB_STATE_QUEUED, types_pb2.JOB_STATE_BUILDING)

    message = await runner.next()
    assert message.WhichOneof("message") == "assign"
    assign = message.assign
    assert assign.job.id == submitted.job.id
    assert list(assign.job.spec.command) == ["echo", "hello"]
    await runner.send(accept=scheduler_pb2.Accept(execution_id=assign.execution_id))
    await runner.send(
        heartbeat=scheduler_pb2.Heartbeat(
            executions=[
                scheduler_pb2.ExecutionProgress(
                    execution_id=assign.execution_id, logtail="hel", progress_percent=50
                )
            ]
        )
    )
    await runner.send(
        result=scheduler_pb2.Result(
            execution_id=assign.execution_id,
            outcome=types_pb2.OUTCOME_SUCCEEDED,
            info="exit status 0",
            logtail="hello\n",
        )
    )
    ack = await runner.next()
    assert ack.result_ack.execution_id == assign.execution_id
    assert ack.result_ack.applied

    job = (await admin(channel).GetJob(admin_pb2.GetJobRequest(id=submitted.job.id))).job
    assert job.state == types_pb2.JOB_STATE_SUCCEEDED
    assert job.info == "exit status 0"
    assert [e.kind for e in job.events] == ["submitted", "started", "finished"]
    assert job.executions[0].logtail == "hello\n"
    assert job.executions[0].runner == "r1"
    listed = await admin(channel).ListJobs(
        admin_pb2.ListJobsRequest(states=[types_pb2.JOB_STATE_SUCCEEDED], queue="demo")
    )
    assert [j.id for j in listed.jobs] == [job.id]
    runners = await admin(channel).ListRunners(admin_pb2.ListRunnersRequest())
    assert [(r.name, r.state) for r in runners.runners] == [("r1", types_pb2.RUNNER_STATE_ONLINE)]
    await runner.call.done_writing()


async def test_a_runner_whose_stream_broke_re_attaches_and_finishes(
    channel: grpc.aio.Channel,
) -> None:
    first, welcome = await connect_runner(channel, "r1")
    submitted = await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec()))
    assign = (await first.next()).assign
    first.call.cancel()  # the connection drops mid-build

    again, rewelcome = await connect_runner(channel, "r1", resume_token=welcome.resume_token)
    assert list(rewelcome.execution_ids) == [assign.execution_id]
    await again.send(
        result=scheduler_pb2.Result(
            execution_id=assign.execution_id, outcome=types_pb2.OUTCOME_SUCCEEDED
        )
    )
    assert (await again.next()).result_ack.applied
    job = (await admin(channel).GetJob(admin_pb2.GetJobRequest(id=submitted.job.id))).job
    assert job.state == types_pb2.JOB_STATE_SUCCEEDED
    assert job.attempt == 1  # never run twice
    again.call.cancel()


async def test_a_stream_gone_past_the_grace_requeues_its_job_to_another_runner(
    database_url: str,
) -> None:
    async with (
        running_server(database_url, reattach_grace_seconds=0.2) as server,
        open_channel(server) as channel,
    ):
        first, _ = await connect_runner(channel, "r1")
        submitted = await admin(channel).SubmitJob(
            admin_pb2.SubmitJobRequest(spec=job_spec(on_lost=types_pb2.ON_LOST_POLICY_REQUEUE))
        )
        assert (await first.next()).WhichOneof("message") == "assign"
        first.call.cancel()

        second, _ = await connect_runner(channel, "r2")
        assign = (await second.next()).assign
        assert assign.job.id == submitted.job.id
        assert assign.job.attempt == 2
        job = (await admin(channel).GetJob(admin_pb2.GetJobRequest(id=assign.job.id))).job
        assert "reclaimed" in [e.kind for e in job.events]
        second.call.cancel()


async def test_drain_stops_new_work_and_undrain_resumes_it(channel: grpc.aio.Channel) -> None:
    runner, _ = await connect_runner(channel, "r1")
    drained = await admin(channel).DrainRunner(
        admin_pb2.DrainRunnerRequest(name="r1", reason="kernel upgrade")
    )
    assert drained.runner.state == types_pb2.RUNNER_STATE_DRAINING
    assert (await runner.next()).drain.reason == "kernel upgrade"
    submitted = await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec()))
    undrained = await admin(channel).UndrainRunner(admin_pb2.UndrainRunnerRequest(name="r1"))
    assert undrained.runner.state == types_pb2.RUNNER_STATE_ONLINE
    assert (await runner.next()).assign.job.id == submitted.job.id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await admin(channel).DrainRunner(admin_pb2.DrainRunnerRequest(name="ghost"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    runner.call.cancel()


async def test_cancel_reaches_the_runner_and_completes_on_ack(channel: grpc.aio.Channel) -> None:
    runner, _ = await connect_runner(channel, "r1")
    submitted = await admin(channel).SubmitJob(
        admin_pb2.SubmitJobRequest(spec=job_spec("sleep", "60"))
    )
    assign = (await runner.next()).assign
    response = await admin(channel).CancelJob(
        admin_pb2.CancelJobRequest(id=submitted.job.id, reason="wrong branch")
    )
    assert response.job.state == types_pb2.JOB_STATE_BUILDING
    cancel = (await runner.next()).cancel
    assert cancel.execution_id == assign.execution_id
    assert cancel.reason == "wrong branch"
    await runner.send(cancel_ack=scheduler_pb2.CancelAck(execution_id=assign.execution_id))

    async def cancelled() -> bool:
        job = (await admin(channel).GetJob(admin_pb2.GetJobRequest(id=submitted.job.id))).job
        return job.state == types_pb2.JOB_STATE_CANCELLED

    await eventually(cancelled)
    runner.call.cancel()


async def test_a_result_for_an_unknown_execution_is_refused(channel: grpc.aio.Channel) -> None:
    runner, _ = await connect_runner(channel, "r1")
    await runner.send(
        result=scheduler_pb2.Result(execution_id=999, outcome=types_pb2.OUTCOME_SUCCEEDED)
    )
    ack = (await runner.next()).result_ack
    assert not ack.applied
    assert "does not exist" in ack.reason
    runner.call.cancel()


async def test_the_first_message_must_be_hello(channel: grpc.aio.Channel) -> None:
    from dispatcher.v1 import scheduler_pb2_grpc

    call = scheduler_pb2_grpc.SchedulerStub(channel).Connect()
    await call.write(scheduler_pb2.ConnectRequest(heartbeat=scheduler_pb2.Heartbeat()))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be a Hello" in (caught.value.details() or "")


async def test_a_bad_hello_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    from dispatcher.v1 import scheduler_pb2_grpc

    call = scheduler_pb2_grpc.SchedulerStub(channel).Connect()
    await call.write(
        scheduler_pb2.ConnectRequest(
            hello=scheduler_pb2.Hello(name="r1", platform=LINUX, capacity=0)
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "capacity must be between 1 and" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("method", "request_message", "code", "message"),
    [
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.platform is required",
        ),
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(spec=types_pb2.JobSpec(platform=LINUX)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.command is required",
        ),
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(spec=job_spec(on_lost=99)),  # type: ignore[arg-type]
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.on_lost: unknown value 99",
        ),
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(spec=job_spec(labels=["a b"])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.labels: 'a b' is not valid",
        ),
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(spec=job_spec(payload=b"x" * (1024 * 1024 + 1))),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "spec.payload is larger than the limit",
        ),
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(spec=job_spec(coalesce_keys=["repo:x", ""])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.coalesce_keys must not contain an empty key",
        ),
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(spec=job_spec(dedupe_key="t" * 129)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "spec.dedupe_key is longer than 128 characters",
        ),
        (
            "SubmitJob",
            admin_pb2.SubmitJobRequest(spec=job_spec(distributor="buildbucket")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "spec.distributor 'buildbucket' does not exist",
        ),
        (
            "SubmitJobs",
            admin_pb2.SubmitJobsRequest(),
            grpc.StatusCode.INVALID_ARGUMENT,
            "no jobs given",
        ),
        (
            "SubmitJobs",
            admin_pb2.SubmitJobsRequest(specs=[job_spec(), types_pb2.JobSpec()]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "job 1: spec.platform is required",
        ),
        ("GetJob", admin_pb2.GetJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "id is required"),
        (
            "GetJob",
            admin_pb2.GetJobRequest(id=424242),
            grpc.StatusCode.NOT_FOUND,
            "job 424242 does not exist",
        ),
        (
            "CancelJob",
            admin_pb2.CancelJobRequest(id=424242),
            grpc.StatusCode.NOT_FOUND,
            "job 424242 does not exist",
        ),
        (
            "ListJobs",
            admin_pb2.ListJobsRequest(states=[42]),  # type: ignore[list-item]
            grpc.StatusCode.INVALID_ARGUMENT,
            "states: unknown value 42",
        ),
        (
            "ListJobs",
            admin_pb2.ListJobsRequest(page_size=5000),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size must be between 1 and 1000",
        ),
        (
            "ListJobs",
            admin_pb2.ListJobsRequest(page_token="nope"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token is not one this server issued",
        ),
    ],
)
async def test_malformed_admin_requests_are_refused_and_change_nothing(
    server: Server,
    channel: grpc.aio.Channel,
    method: str,
    request_message: object,
    code: grpc.StatusCode,
    message: str,
) -> None:
    before = row_counts(server.db)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(admin(channel), method)(request_message)
    assert caught.value.code() == code
    assert message in (caught.value.details() or "")
    assert row_counts(server.db) == before


async def test_notify_checks_its_input(server: Server, channel: grpc.aio.Channel) -> None:
    stub = distributor_pb2_grpc.DistributorStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Notify(distributor_pb2.NotifyRequest(execution_id=1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Notify(distributor_pb2.NotifyRequest(execution_id=77, token="t"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListDistributors(distributor_pb2.ListDistributorsRequest())
    assert [(d.name, d.kind) for d in listed.distributors] == [("runners", "runners")]


async def test_server_info(channel: grpc.aio.Channel, database_url: str) -> None:
    info = await admin(channel).GetServerInfo(admin_pb2.GetServerInfoRequest())
    assert info.database == ("sqlite" if database_url.startswith("sqlite") else "postgresql")
    assert info.version
    assert info.replica_id


async def test_reflection_resolves_method_symbols(channel: grpc.aio.Channel) -> None:
    """grpcurl's `describe Service.Method` asks for the file containing a method."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    for symbol in ("dispatcher.v1.Admin.SubmitJob", "dispatcher.v1.Admin.NoSuchMethod"):
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
    found = await call.read()
    missing = await call.read()
    await call.done_writing()
    assert found.WhichOneof("message_response") == "file_descriptor_response"
    assert missing.WhichOneof("message_response") == "error_response"
    assert missing.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_a_cancel_the_runner_ignores_is_forced_after_the_grace(database_url: str) -> None:
    async with (
        running_server(database_url, cancel_grace_seconds=0.3) as server,
        open_channel(server) as channel,
    ):
        runner, _ = await connect_runner(channel, "stubborn")
        submitted = await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=job_spec()))
        assign = (await runner.next()).assign
        await runner.send(accept=scheduler_pb2.Accept(execution_id=assign.execution_id))
        await admin(channel).CancelJob(admin_pb2.CancelJobRequest(id=submitted.job.id))
        assert (await runner.next()).cancel.execution_id == assign.execution_id  # ignored

        async def forced() -> bool:
            job = (await admin(channel).GetJob(admin_pb2.GetJobRequest(id=submitted.job.id))).job
            return job.state == types_pb2.JOB_STATE_CANCELLED

        await eventually(forced, timeout=5)
        job = (await admin(channel).GetJob(admin_pb2.GetJobRequest(id=submitted.job.id))).job
        assert "did not confirm within the grace" in job.info
        # Its late result is refused: the execution was fenced.
        await runner.send(
            result=scheduler_pb2.Result(
                execution_id=assign.execution_id, outcome=types_pb2.OUTCOME_SUCCEEDED
            )
        )
        while (message := await runner.next()).WhichOneof("message") != "result_ack":
            pass
        assert not message.result_ack.applied
        runner.call.cancel()
