"""A real server brought to jobs in every state through real gRPC: a raw runner stream
that accepts and reports, Admin calls that submit and cancel."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher.v1 import admin_pb2, scheduler_pb2, types_pb2
from tests.support.server import RawRunner, admin, connect_runner

PLATFORM = "linux/x86_64"
# No runner ever serves this platform, so its jobs stay QUEUED.
UNSERVED = "plan9/mips"
RUNNER = "web-runner"
# A platform with one flavor; a job it cannot serve is NOT_FOR_US.
FLAVORED = "haiku/x86_64"
FLAVOR = "haiku-big"


@dataclass
class Workload:
    """Job ids by the state each was brought to, and the runner holding the BUILDING one."""

    ids: dict[str, list[int]] = field(default_factory=dict)
    runner: RawRunner | None = None

    def add(self, state: str, job_id: int) -> None:
        self.ids.setdefault(state, []).append(job_id)


def spec(
    platform: str = PLATFORM, command: tuple[str, ...] = ("make", "all"), **kw: object
) -> types_pb2.JobSpec:
    return types_pb2.JobSpec(platform=platform, command=list(command), **kw)  # type: ignore[arg-type]


async def submit(channel: grpc.aio.Channel, job: types_pb2.JobSpec) -> int:
    response = await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=job))
    return int(response.job.id)


async def next_message(runner: RawRunner, kind: str) -> scheduler_pb2.ConnectResponse:
    """The next message of ``kind`` from the dispatcher, skipping acks and the like."""
    while True:
        message = await runner.next()
        if message.WhichOneof("message") == kind:
            return message


async def run_one(
    channel: grpc.aio.Channel, runner: RawRunner, outcome: int, queue: str, logtail: str
) -> int:
    job_id = await submit(channel, spec(queue=queue))
    assign = (await next_message(runner, "assign")).assign
    assert assign.job.id == job_id
    await runner.send(accept=scheduler_pb2.Accept(execution_id=assign.execution_id))
    await runner.send(
        result=scheduler_pb2.Result(
            execution_id=assign.execution_id,
            outcome=outcome,  # type: ignore[arg-type]
            info=f"{types_pb2.Outcome.Name(outcome).removeprefix('OUTCOME_').lower()} as planned",
            logtail=logtail,
        )
    )
    ack = await next_message(runner, "result_ack")
    assert ack.result_ack.applied, ack.result_ack.reason
    return job_id


async def every_state(channel: grpc.aio.Channel) -> Workload:
    """SUCCEEDED, FAILED, IRRECOVERABLE (reported by the runner), BUILDING (held by it),
    QUEUED (on a platform no runner serves), CANCELLED (cancelled while queued),
    NOTICED (due in an hour) and NOT_FOR_US (no flavor of its platform serves it)."""
    work = Workload()
    runner, _ = await connect_runner(channel, RUNNER, platform=PLATFORM, labels=("web",))
    work.runner = runner
    work.add(
        "SUCCEEDED",
        await run_one(channel, runner, types_pb2.OUTCOME_SUCCEEDED, "main", "compiling\nok\n"),
    )
    work.add(
        "FAILED",
        await run_one(channel, runner, types_pb2.OUTCOME_FAILED, "main", "error: no rule\n"),
    )
    work.add(
        "IRRECOVERABLE",
        await run_one(channel, runner, types_pb2.OUTCOME_IRRECOVERABLE, "release", "upload\n"),
    )
    building = await submit(channel, spec(queue="main"))
    assign = (await next_message(runner, "assign")).assign
    await runner.send(accept=scheduler_pb2.Accept(execution_id=assign.execution_id))
    await runner.send(
        heartbeat=scheduler_pb2.Heartbeat(
            executions=[
                scheduler_pb2.ExecutionProgress(
                    execution_id=assign.execution_id, logtail="step 3/7\n", progress_percent=40
                )
            ]
        )
    )
    work.add("BUILDING", building)
    work.add("QUEUED", await submit(channel, spec(UNSERVED, queue="ports")))
    cancelled = await submit(channel, spec(UNSERVED, queue="ports"))
    await admin(channel).CancelJob(admin_pb2.CancelJobRequest(id=cancelled, reason="not needed"))
    work.add("CANCELLED", cancelled)
    later = Timestamp()
    later.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    work.add("NOTICED", await submit(channel, spec(queue="nightly", not_before=later)))
    await admin(channel).AddFlavor(
        admin_pb2.AddFlavorRequest(
            flavor=types_pb2.Flavor(
                name=FLAVOR, platform=FLAVORED, labels=["big"], enabled=True, min_pressure=2
            )
        )
    )
    work.add("NOT_FOR_US", await submit(channel, spec(FLAVORED, queue="ports", labels=["gpu"])))
    return work
