"""Jobs on the wire: what a submitter gets back and a runner is assigned carries every
field of the job, and a spec read back from the wire is the spec that was sent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatcher.api import convert
from dispatcher.domain.model import Execution, Job, JobEvent, JobSpec, RetryPolicy
from dispatcher.domain.states import JobState, OnLostPolicy, Outcome
from dispatcher.v1 import scheduler_pb2, types_pb2

AT = datetime(2026, 11, 23, 12, 30, 15, 250000, tzinfo=UTC)

FULL_SPEC = JobSpec(
    platform="linux/amd64",
    command=("make", "-j8", "all"),
    queue="release",
    labels=frozenset({"big", "gpu"}),
    payload=b"\x00\x01payload",
    priority=-7,
    not_before=AT + timedelta(minutes=5),
    coalesce_keys=frozenset({"repo-a", "repo-b"}),
    dedupe_key="build-42",
    idempotency_key="submit-42",
    origin_time=AT - timedelta(seconds=1, microseconds=5),
    distributor="runners",
    on_lost=OnLostPolicy.IRRECOVERABLE,
    retry=RetryPolicy(
        max_attempts=4,
        initial_delay=timedelta(seconds=2.5),
        multiplier=3.0,
        max_delay=timedelta(minutes=10),
        max_lost=2,
    ),
    subject="repo-a",
    process="compile",
    failure_backoff=timedelta(minutes=15),
    max_wait=timedelta(hours=2),
    max_run=timedelta(seconds=90),
)


def test_a_full_spec_survives_the_wire() -> None:
    wire = types_pb2.JobSpec.FromString(convert.spec_to_proto(FULL_SPEC).SerializeToString())
    assert convert.spec_from_proto(wire) == FULL_SPEC
    assert list(wire.labels) == ["big", "gpu"]  # sorted: one spelling per set


def test_a_minimal_spec_sends_only_what_it_sets() -> None:
    spec = JobSpec(platform="linux/amd64", command=("true",))
    wire = convert.spec_to_proto(spec)
    assert convert.spec_from_proto(wire) == spec
    assert not wire.HasField("not_before")
    assert not wire.HasField("max_wait")
    assert wire.retry.max_attempts == 1
    assert wire.retry.initial_delay.seconds == 10


def test_a_job_carries_its_state_history_and_backend_data() -> None:
    execution = Execution(
        id=9,
        job_id=3,
        number=2,
        runner="r1",
        session_id=4,
        started_at=AT,
        finished_at=AT + timedelta(seconds=3),
        outcome=Outcome.SUCCEEDED,
        result=b"ok",
    )
    event = JobEvent(3, 3, 9, "claimed", JobState.QUEUED, JobState.BUILDING, "runner:r1", "", AT)
    job = Job(
        id=3,
        spec=FULL_SPEC,
        state=JobState.SUCCEEDED,
        info="built",
        attempt=2,
        current_execution_id=9,
        duplicate_of=1,
        created_at=AT - timedelta(hours=1),
        updated_at=AT,
        finished_at=AT + timedelta(seconds=3),
        runner="r1",
        executions=(execution,),
        events=(event,),
        flavor="big-linux",
        schedule="nightly",
        failures=1,
        losses=1,
        raw={"backend": "x", "tries": 2},
    )
    wire = convert.job_to_proto(job)
    assert (wire.id, wire.state, wire.info, wire.attempt) == (
        3,
        types_pb2.JOB_STATE_SUCCEEDED,
        "built",
        2,
    )
    assert (wire.current_execution_id, wire.duplicate_of) == (9, 1)
    assert wire.created_at.ToDatetime(UTC) == job.created_at
    assert wire.updated_at.ToDatetime(UTC) == AT
    assert wire.finished_at.ToDatetime(UTC) == job.finished_at
    assert (wire.runner, wire.flavor, wire.schedule) == ("r1", "big-linux", "nightly")
    assert (wire.failures, wire.losses) == (1, 1)
    assert dict(wire.raw) == {"backend": "x", "tries": 2}
    assert [e.id for e in wire.executions] == [9]
    assert wire.executions[0].result == b"ok"
    assert [e.kind for e in wire.events] == ["claimed"]
    assert convert.spec_from_proto(wire.spec) == FULL_SPEC


def test_a_waiting_job_has_no_end_time_nor_execution() -> None:
    job = Job(
        id=5,
        spec=JobSpec(platform="p", command=("true",), not_before=AT),
        state=JobState.QUEUED,
        info="",
        attempt=0,
        current_execution_id=None,
        duplicate_of=None,
        created_at=AT,
        updated_at=AT,
        finished_at=None,
    )
    wire = convert.job_to_proto(job)
    assert wire.state == types_pb2.JOB_STATE_QUEUED
    assert not wire.HasField("finished_at")
    assert not wire.HasField("raw")
    assert wire.current_execution_id == 0
    assert wire.spec.not_before.ToDatetime(UTC) == AT


def test_an_assign_carries_the_job_as_a_job_of_its_own_would() -> None:
    job = Job(
        id=8,
        spec=FULL_SPEC,
        state=JobState.BUILDING,
        info="",
        attempt=3,
        current_execution_id=21,
        duplicate_of=None,
        created_at=AT,
        updated_at=AT + timedelta(seconds=1),
        finished_at=None,
        runner="r2",
        flavor="big-linux",
    )
    response = scheduler_pb2.ConnectResponse()
    convert.fill_job(response.assign.job, job)
    assert response.WhichOneof("message") == "assign"
    assert response.assign.job == convert.job_to_proto(job)
    wire = scheduler_pb2.ConnectResponse.FromString(response.SerializeToString()).assign.job
    assert (wire.id, wire.state, wire.attempt, wire.runner) == (
        8,
        types_pb2.JOB_STATE_BUILDING,
        3,
        "r2",
    )
    assert convert.spec_from_proto(wire.spec) == FULL_SPEC
