"""The job lifecycle on both databases: every move fenced, every move with its event."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta, timezone

import pytest
from sqlalchemy import func, select

from dispatcher.domain.errors import InvalidInput, LimitExceeded, NotFound
from dispatcher.domain.model import Flavor, JobFilter, JobSpec, ResultReport
from dispatcher.domain.states import LEGAL_MOVES, JobState, OnLostPolicy, Outcome
from dispatcher.store.database import Database
from dispatcher.store.tables import coalesce_holds, job_events, jobs
from tests.support.services import Services

LINUX = "linux/x86_64"


def spec(*command: str, **kw: object) -> JobSpec:
    return JobSpec(platform=kw.pop("platform", LINUX), command=command or ("true",), **kw)  # type: ignore[arg-type]


def count_rows(db: Database, table: object) -> int:
    with db.transaction() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def assert_history_is_legal(db: Database) -> None:
    """Every state change in the event history is a move the transition table allows."""
    with db.transaction() as conn:
        rows = conn.execute(
            select(job_events.c.from_state, job_events.c.to_state).where(
                job_events.c.to_state.is_not(None)
            )
        ).all()
    for from_state, to_state in rows:
        move = (JobState(from_state) if from_state else None, JobState(to_state))
        assert move in LEGAL_MOVES, move


async def test_submit_claim_succeed(svc: Services) -> None:
    [(job, created)] = await svc.jobs.submit([spec("echo", "hi")], actor="admin")
    assert created
    assert job.state is JobState.QUEUED
    assert svc.wakeups
    demand = await svc.connect()
    [assignment] = await svc.jobs.claim([demand])
    assert assignment.job.id == job.id
    assert assignment.job.state is JobState.BUILDING
    assert assignment.job.attempt == 1
    assert assignment.job.runner == "r1"

    verdict = await svc.executions.report_result(
        demand.session_id,
        "r1",
        ResultReport(assignment.execution_id, Outcome.SUCCEEDED, "exit status 0", logtail="hi\n"),
    )
    assert verdict.applied
    done = await svc.jobs.get(job.id)
    assert done.state is JobState.SUCCEEDED
    assert done.finished_at is not None
    assert [e.kind for e in done.events] == ["submitted", "started", "finished"]
    [execution] = done.executions
    assert execution.outcome is Outcome.SUCCEEDED
    assert execution.logtail == "hi\n"
    assert_history_is_legal(svc.db)


async def test_failed_result_fails_the_job(svc: Services) -> None:
    [(job, _)] = await svc.jobs.submit([spec("false")], actor="admin")
    demand = await svc.connect()
    [a] = await svc.jobs.claim([demand])
    await svc.executions.report_result(
        demand.session_id, "r1", ResultReport(a.execution_id, Outcome.FAILED, "exit status 1")
    )
    failed = await svc.jobs.get(job.id)
    assert failed.state is JobState.FAILED
    assert failed.info == "exit status 1"


async def test_a_late_result_about_an_old_execution_is_refused_and_recorded(
    svc: Services,
) -> None:
    [(job, _)] = await svc.jobs.submit([spec(on_lost=OnLostPolicy.REQUEUE)], actor="admin")
    first = await svc.connect("r1")
    [old] = await svc.jobs.claim([first])
    await svc.sessions.close(first.session_id, "stream closed")  # requeued, attempt 2 next
    second = await svc.connect("r2")
    [new] = await svc.jobs.claim([second])
    assert new.job.attempt == 2

    verdict = await svc.executions.report_result(
        first.session_id, "r1", ResultReport(old.execution_id, Outcome.SUCCEEDED)
    )
    assert not verdict.applied
    assert "not the current execution" in verdict.reason
    current = await svc.jobs.get(job.id)
    assert current.state is JobState.BUILDING
    assert current.current_execution_id == new.execution_id
    assert "stale-message" in [e.kind for e in current.events]


async def test_a_result_from_another_session_is_refused(svc: Services) -> None:
    await svc.jobs.submit([spec()], actor="admin")
    owner = await svc.connect("r1")
    other = await svc.connect("r2")
    [a] = await svc.jobs.claim([owner])
    verdict = await svc.executions.report_result(
        other.session_id, "r2", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert not verdict.applied
    assert (await svc.jobs.get(a.job.id)).state is JobState.BUILDING


async def test_a_submitted_job_is_returned_as_it_reads_back(svc: Services) -> None:
    """Submit answers with the jobs it wrote without reading them again; what it
    answers is what a later read gives."""
    await svc.flavors.add(Flavor("gpu", "linux/gpu", frozenset({"gpu"})), actor="t")
    later = svc.clock.now() + timedelta(hours=1)
    elsewhere = timezone(timedelta(hours=5))
    specs = [
        spec("true"),
        spec("make", labels=frozenset({"a", "b"}), coalesce_keys=frozenset({"k"}), priority=3),
        spec("sleep", not_before=later.astimezone(elsewhere), max_run=timedelta(seconds=9)),
        spec("x", origin_time=svc.clock.now().astimezone(elsewhere), idempotency_key="i"),
        spec("y", platform="linux/gpu", labels=frozenset({"gpu"}), payload=b"\x00\x01"),
        spec("z", platform="linux/gpu", labels=frozenset({"tpu"})),  # no flavor: NOT_FOR_US
    ]
    submitted = [job for job, _ in await svc.jobs.submit(specs, actor="admin")]
    assert [j.state for j in submitted][-1] is JobState.NOT_FOR_US
    for job in submitted:
        read = await svc.jobs.get(job.id)
        assert replace(read, executions=(), events=()) == job


async def test_reports_in_one_group_commit_are_fenced_in_order(svc: Services) -> None:
    """Reports that share a batch are decided one after the other, each seeing what the
    ones before it wrote: a second result of an execution is refused even when the first
    one is in the same batch, and a failure takes its own path among plain results."""
    submitted = await svc.jobs.submit(
        [spec(), spec(), spec(coalesce_keys=frozenset({"tree"}))], actor="admin"
    )
    owner = await svc.connect("r1", capacity=3)
    other = await svc.connect("r2")
    plain, failing, keyed = sorted(await svc.jobs.claim([owner]), key=lambda a: a.job.id)
    assert [a.job.id for a in (plain, failing, keyed)] == [job.id for job, _ in submitted]
    results = svc.executions.report_result
    verdicts = await asyncio.gather(
        svc.executions.accept(owner.session_id, "r1", plain.execution_id),
        results(
            owner.session_id,
            "r1",
            ResultReport(plain.execution_id, Outcome.SUCCEEDED, logtail="final"),
        ),
        svc.executions.heartbeat(owner.session_id, [(plain.execution_id, "late", 99)]),
        results(owner.session_id, "r1", ResultReport(plain.execution_id, Outcome.SUCCEEDED)),
        results(other.session_id, "r2", ResultReport(failing.execution_id, Outcome.SUCCEEDED)),
        results(owner.session_id, "r1", ResultReport(failing.execution_id, Outcome.FAILED, "x")),
        svc.executions.accept(owner.session_id, "r1", failing.execution_id),
        results(owner.session_id, "r1", ResultReport(keyed.execution_id, Outcome.IRRECOVERABLE)),
        results(owner.session_id, "r1", ResultReport(999_999, Outcome.SUCCEEDED)),
    )
    heartbeat = verdicts.pop(2)
    assert heartbeat is None
    assert [v.applied for v in verdicts] == [True, True, False, False, True, False, True, False]
    assert "does not exist" in verdicts[-1].reason
    states = {
        job_id: (await svc.jobs.get(job_id))
        for job_id in (plain.job.id, failing.job.id, keyed.job.id)
    }
    assert states[plain.job.id].state is JobState.SUCCEEDED
    assert states[failing.job.id].state is JobState.FAILED
    assert states[keyed.job.id].state is JobState.IRRECOVERABLE
    assert [e.kind for e in states[plain.job.id].events] == [
        "submitted",
        "started",
        "finished",
        "stale-message",
    ]
    assert [e.kind for e in states[failing.job.id].events].count("stale-message") == 2
    [execution] = states[plain.job.id].executions
    assert execution.outcome is Outcome.SUCCEEDED
    assert execution.logtail == "final"  # the heartbeat after the result changed nothing
    assert count_rows(svc.db, coalesce_holds) == 0
    assert_history_is_legal(svc.db)


@pytest.mark.parametrize(
    ("policy", "commit", "expected"),
    [
        (OnLostPolicy.REQUEUE, False, JobState.QUEUED),
        (OnLostPolicy.REQUEUE, True, JobState.QUEUED),
        (OnLostPolicy.IRRECOVERABLE, False, JobState.IRRECOVERABLE),
        (OnLostPolicy.REQUEUE_UNTIL_COMMITTED, False, JobState.QUEUED),
        (OnLostPolicy.REQUEUE_UNTIL_COMMITTED, True, JobState.IRRECOVERABLE),
    ],
)
async def test_lost_stream_follows_the_on_lost_policy(
    svc: Services, policy: OnLostPolicy, commit: bool, expected: JobState
) -> None:
    [(job, _)] = await svc.jobs.submit([spec(on_lost=policy)], actor="admin")
    demand = await svc.connect()
    [a] = await svc.jobs.claim([demand])
    if commit:
        assert (await svc.executions.commit_point(demand.session_id, "r1", a.execution_id)).applied
    moved = await svc.sessions.close(demand.session_id, "stream closed")
    assert moved == [(job.id, expected)]
    after = await svc.jobs.get(job.id)
    assert after.state is expected
    assert after.executions[0].outcome is Outcome.LOST
    assert after.events[-1].kind == (
        "reclaimed" if expected is JobState.QUEUED else "irrecoverable"
    )
    assert "runner r1 lost" in after.events[-1].cause
    assert_history_is_legal(svc.db)


async def test_capacity_and_matching(svc: Services) -> None:
    await svc.jobs.submit(
        [spec(labels=frozenset({"gpu"})), spec(), spec(), spec(platform="darwin/arm64")],
        actor="admin",
    )
    plain = await svc.connect("plain", capacity=5)
    got = await svc.jobs.claim([plain])
    # Not the gpu job (labels not a subset), not the darwin one (platform differs).
    assert len(got) == 2
    assert all(not a.job.spec.labels for a in got)
    gpu = await svc.connect("gpu", labels=frozenset({"gpu", "big"}), capacity=1)
    [a] = await svc.jobs.claim([gpu])
    assert a.job.spec.labels == {"gpu"}


async def test_claim_order_is_priority_then_due_then_submission(svc: Services) -> None:
    now = svc.clock.now()
    results = await svc.jobs.submit(
        [
            spec("low"),
            spec("high", priority=10),
            spec("early", not_before=now - timedelta(minutes=5)),
            spec("high-later", priority=10),
        ],
        actor="admin",
    )
    ids = [job.id for job, _ in results]
    demand = await svc.connect(capacity=4)
    order = [a.job.id for a in await svc.jobs.claim([demand])]
    assert order == [ids[1], ids[3], ids[2], ids[0]]


async def test_not_due_jobs_wait_as_noticed_until_due(svc: Services) -> None:
    later = svc.clock.now() + timedelta(minutes=10)
    [(job, _)] = await svc.jobs.submit([spec(not_before=later)], actor="admin")
    assert job.state is JobState.NOTICED
    demand = await svc.connect()
    assert await svc.jobs.claim([demand]) == []
    assert await svc.jobs.queue_due() == 0
    svc.clock.advance(timedelta(minutes=10))
    assert await svc.jobs.queue_due() == 1
    [a] = await svc.jobs.claim([demand])
    assert a.job.id == job.id


async def test_idempotency_key_returns_the_first_job(svc: Services) -> None:
    [(first, created)] = await svc.jobs.submit([spec(idempotency_key="push-42")], actor="admin")
    [(again, created_again)] = await svc.jobs.submit(
        [spec(idempotency_key="push-42")], actor="admin"
    )
    assert created
    assert not created_again
    assert again.id == first.id
    batch = await svc.jobs.submit(
        [spec(idempotency_key="k2"), spec(idempotency_key="k2")], actor="admin"
    )
    assert batch[0][0].id == batch[1][0].id
    assert batch[0][1]
    assert not batch[1][1]
    assert count_rows(svc.db, jobs) == 2


async def test_cancel_waiting_and_building(svc: Services) -> None:
    [(waiting, _), (running, _)] = await svc.jobs.submit([spec(), spec()], actor="admin")
    cancelled, order = await svc.jobs.cancel(waiting.id, actor="admin", reason="not needed")
    assert cancelled.state is JobState.CANCELLED
    assert order is None
    demand = await svc.connect()
    [a] = await svc.jobs.claim([demand])
    assert a.job.id == running.id
    still, order = await svc.jobs.cancel(running.id, actor="admin", reason="")
    assert still.state is JobState.BUILDING
    assert still.cancel_requested
    assert order is not None
    assert order.execution_id == a.execution_id
    verdict = await svc.executions.cancel_ack(demand.session_id, "r1", a.execution_id)
    assert verdict.applied
    final = await svc.jobs.get(running.id)
    assert final.state is JobState.CANCELLED
    assert final.executions[0].outcome is Outcome.CANCELLED
    # Terminal states never change again: a late result is refused.
    late = await svc.executions.report_result(
        demand.session_id, "r1", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert not late.applied
    assert (await svc.jobs.get(running.id)).state is JobState.CANCELLED
    # Cancelling a terminal job changes nothing.
    again, order = await svc.jobs.cancel(running.id, actor="admin", reason="")
    assert again.state is JobState.CANCELLED
    assert order is None


async def test_a_lost_runner_with_a_pending_cancel_cancels_the_job(svc: Services) -> None:
    [(job, _)] = await svc.jobs.submit([spec(on_lost=OnLostPolicy.REQUEUE)], actor="admin")
    demand = await svc.connect()
    await svc.jobs.claim([demand])
    await svc.jobs.cancel(job.id, actor="admin", reason="")
    await svc.sessions.close(demand.session_id, "stream closed")
    assert (await svc.jobs.get(job.id)).state is JobState.CANCELLED


async def test_refused_assignment_goes_back_to_the_queue(svc: Services) -> None:
    [(job, _)] = await svc.jobs.submit([spec()], actor="admin")
    demand = await svc.connect()
    [a] = await svc.jobs.claim([demand])
    verdict = await svc.executions.refuse(demand.session_id, "r1", a.execution_id, "disk full")
    assert verdict.applied
    again = await svc.jobs.get(job.id)
    assert again.state is JobState.QUEUED
    assert "disk full" in again.info


async def test_same_runner_name_replaces_and_fences_the_old_session(svc: Services) -> None:
    [(job, _)] = await svc.jobs.submit([spec(on_lost=OnLostPolicy.REQUEUE)], actor="admin")
    old = await svc.connect("r1")
    [a] = await svc.jobs.claim([old])
    new = await svc.connect("r1")
    assert (await svc.jobs.get(job.id)).state is JobState.QUEUED
    assert await svc.jobs.claim([old]) == []  # the old session gets nothing any more
    verdict = await svc.executions.report_result(
        old.session_id, "r1", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert not verdict.applied
    [b] = await svc.jobs.claim([new])
    assert b.job.id == job.id
    assert b.job.attempt == 2


async def test_bad_input_is_refused_and_changes_nothing(svc: Services) -> None:
    with pytest.raises(InvalidInput, match="platform is required"):
        await svc.jobs.submit([JobSpec(platform="", command=("true",))], actor="admin")
    with pytest.raises(InvalidInput, match="command is required"):
        await svc.jobs.submit([JobSpec(platform=LINUX)], actor="admin")
    with pytest.raises(InvalidInput, match=r"job 1: spec.labels"):
        await svc.jobs.submit([spec(), spec(labels=frozenset({"bad label"}))], actor="admin")
    with pytest.raises(LimitExceeded, match="limit of 64"):
        await svc.jobs.submit([spec(labels=frozenset(f"l{i}" for i in range(65)))], actor="admin")
    with pytest.raises(NotFound, match="job 12345 does not exist"):
        await svc.jobs.get(12345)
    with pytest.raises(InvalidInput, match="page_token"):
        await svc.jobs.page(JobFilter(), page_size=10, page_token="garbage")
    assert count_rows(svc.db, jobs) == 0
    assert count_rows(svc.db, job_events) == 0


async def test_list_filters_and_pages(svc: Services) -> None:
    await svc.jobs.submit(
        [spec(queue="upload"), spec(queue="import", labels=frozenset({"gpu"})), spec()] * 5,
        actor="admin",
    )
    uploads = await svc.jobs.page(JobFilter(queue="upload"), page_size=100, page_token="")
    assert len(uploads.jobs) == 5
    assert uploads.next_after_id is None
    gpu = await svc.jobs.page(JobFilter(labels=frozenset({"gpu"})), page_size=100, page_token="")
    assert {j.spec.queue for j in gpu.jobs} == {"import"}

    from dispatcher.lifecycle.jobs import encode_page_token

    seen: list[int] = []
    token = ""
    while True:
        page = await svc.jobs.page(
            JobFilter(states=frozenset({JobState.QUEUED})), page_size=4, page_token=token
        )
        seen.extend(j.id for j in page.jobs)
        if page.next_after_id is None:
            break
        token = encode_page_token(page.next_after_id)
    assert seen == sorted(seen, reverse=True)
    assert len(set(seen)) == 15
