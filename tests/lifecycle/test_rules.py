"""Each scheduling rule of SPEC §5 on both databases, including the seed behaviours:
a duplicate of an uploaded job takes its status; a job for the same dedupe key as a
FAILED one runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from dispatcher.domain.errors import Conflict, InvalidInput
from dispatcher.domain.model import (
    Flavor,
    JobFilter,
    JobSpec,
    ResultReport,
    RetryPolicy,
    ScheduleSpec,
    ScheduleState,
)
from dispatcher.domain.rules import SchedulingRules
from dispatcher.domain.states import JobState, OnLostPolicy, Outcome
from dispatcher.lifecycle.jobs import Demand
from dispatcher.store.database import Database
from tests.support.services import Services, services

LINUX = "linux/x86_64"


@pytest.fixture
async def svc(db: Database) -> AsyncIterator[Services]:
    rules = SchedulingRules(
        quarantine_after=2,
        quarantine_base=timedelta(seconds=30),
        replay_max_age=timedelta(days=1),
        retention=timedelta(days=2),
    )
    async with services(db, rules=rules) as built:
        yield built


def spec(**kw: object) -> JobSpec:
    kw.setdefault("platform", LINUX)
    kw.setdefault("command", ("true",))
    return JobSpec(**kw)  # type: ignore[arg-type]


async def submit(svc: Services, **kw: object) -> int:
    [(job, _)] = await svc.jobs.submit([spec(**kw)], actor="test")
    return job.id


async def state(svc: Services, job_id: int) -> JobState:
    return (await svc.jobs.get(job_id)).state


async def claim_one(svc: Services, demand: Demand) -> tuple[int, int]:
    """Claim for ``demand``; returns (job id, execution id) of the single assignment."""
    [assignment] = await svc.jobs.claim([demand])
    return assignment.job.id, assignment.execution_id


async def finish(svc: Services, demand: Demand, execution_id: int, outcome: Outcome) -> None:
    verdict = await svc.executions.report_result(
        demand.session_id, demand.runner, ResultReport(execution_id, outcome, outcome.value)
    )
    assert verdict.applied, verdict.reason


# --- matching and flavors -----------------------------------------------------------


async def test_a_runner_takes_only_jobs_whose_labels_it_has(svc: Services) -> None:
    gpu = await submit(svc, labels=frozenset({"gpu"}))
    plain = await submit(svc)
    arm = await submit(svc, platform="linux/arm64")
    small = await svc.connect("small", capacity=5)
    assert {a.job.id for a in await svc.jobs.claim([small])} == {plain}
    big = await svc.connect("big", labels=frozenset({"gpu", "kvm"}), capacity=5)
    assert {a.job.id for a in await svc.jobs.claim([big])} == {gpu}
    assert await state(svc, arm) is JobState.QUEUED


async def test_a_job_gets_the_serving_flavor_of_highest_priority(svc: Services) -> None:
    await svc.flavors.add(Flavor("small", LINUX, frozenset(), priority=1), actor="t")
    await svc.flavors.add(Flavor("gpu", LINUX, frozenset({"gpu"}), priority=5), actor="t")
    await svc.flavors.add(Flavor("huge", LINUX, frozenset({"gpu", "big"}), priority=9), actor="t")
    plain = await svc.jobs.get(await submit(svc))
    gpu = await svc.jobs.get(await submit(svc, labels=frozenset({"gpu"})))
    both = await svc.jobs.get(await submit(svc, labels=frozenset({"gpu", "big"})))
    assert (plain.flavor, gpu.flavor, both.flavor) == ("huge", "huge", "huge")
    await svc.flavors.set_enabled("huge", False, actor="t")
    assert (await svc.jobs.get(plain.id)).flavor == "gpu"
    assert (await svc.jobs.get(gpu.id)).flavor == "gpu"
    # Nothing else serves {gpu, big}: it waits, NOTICED, and explain says why.
    waiting = await svc.jobs.get(both.id)
    assert (waiting.state, waiting.flavor) == (JobState.NOTICED, "")
    reasons = (await svc.explainer.explain(both.id)).reasons
    assert [r.code for r in reasons] == ["flavor-disabled"]
    await svc.flavors.set_enabled("huge", True, actor="t")
    await svc.jobs.queue_due()
    back = await svc.jobs.get(both.id)
    assert (back.state, back.flavor) == (JobState.QUEUED, "huge")


async def test_ties_between_flavors_are_broken_at_random(svc: Services) -> None:
    for name in ("a", "b", "c"):
        await svc.flavors.add(Flavor(name, LINUX, frozenset(), priority=1), actor="t")
    jobs = await svc.jobs.submit([spec() for _ in range(60)], actor="t")
    chosen = {job.flavor for job, _ in jobs}
    assert chosen == {"a", "b", "c"}


async def test_a_job_no_flavor_serves_is_not_for_us(svc: Services) -> None:
    await svc.flavors.add(Flavor("small", LINUX, frozenset()), actor="t")
    job = await svc.jobs.get(await submit(svc, labels=frozenset({"gpu"})))
    assert job.state is JobState.NOT_FOR_US
    assert "no flavor serves platform linux/x86_64 with labels [gpu]" in job.info
    # A platform without flavors is not affected.
    other = await svc.jobs.get(await submit(svc, platform="linux/arm64"))
    assert other.state is JobState.QUEUED


async def test_adding_a_flavor_assigns_waiting_jobs_that_had_none(svc: Services) -> None:
    job_id = await submit(svc, labels=frozenset({"gpu"}))
    assert (await svc.jobs.get(job_id)).flavor == ""
    await svc.flavors.add(Flavor("gpu", LINUX, frozenset({"gpu"})), actor="t")
    assert (await svc.jobs.get(job_id)).flavor == "gpu"


async def test_deleting_a_flavor_reassigns_its_waiting_jobs(svc: Services) -> None:
    await svc.flavors.add(Flavor("first", LINUX, frozenset(), priority=2), actor="t")
    await svc.flavors.add(Flavor("second", LINUX, frozenset(), priority=1), actor="t")
    job_id = await submit(svc)
    assert (await svc.jobs.get(job_id)).flavor == "first"
    await svc.flavors.delete("first", actor="t")
    assert (await svc.jobs.get(job_id)).flavor == "second"
    with pytest.raises(Conflict):
        await svc.flavors.add(Flavor("second", LINUX, frozenset()), actor="t")


async def test_pressure_counts_unfinished_jobs_never_below_the_minimum(svc: Services) -> None:
    await svc.flavors.add(Flavor("small", LINUX, frozenset(), min_pressure=2), actor="t")
    assert [(p.flavor, p.value, p.unfinished) for p in await svc.flavors.pressures()] == [
        ("small", 2, 0)
    ]
    ids = [job.id for job, _ in await svc.jobs.submit([spec() for _ in range(3)], actor="t")]
    runner = await svc.connect(capacity=1)
    _, execution = await claim_one(svc, runner)
    assert [p.value for p in await svc.flavors.pressures()] == [3]
    await finish(svc, runner, execution, Outcome.SUCCEEDED)
    await svc.jobs.cancel(ids[2], actor="t", reason="")
    assert [p.value for p in await svc.flavors.pressures()] == [2]


async def test_watching_pressure_yields_a_new_value_when_it_changes(svc: Services) -> None:
    await svc.flavors.add(Flavor("small", LINUX, frozenset()), actor="t")
    watch = svc.flavors.watch()
    assert [p.value for p in await anext(watch)] == [0]
    await submit(svc)
    assert [p.value for p in await anext(watch)] == [1]
    await watch.aclose()


# --- order --------------------------------------------------------------------------


async def test_order_is_priority_then_not_before_then_submission(svc: Services) -> None:
    now = svc.clock.now()
    late = await submit(svc, not_before=now - timedelta(seconds=1))
    early = await submit(svc, not_before=now - timedelta(seconds=10))
    urgent = await submit(svc, priority=5)
    same_a = await submit(svc, not_before=now - timedelta(seconds=10))
    runner = await svc.connect(capacity=4)
    order = [a.job.id for a in await svc.jobs.claim([runner])]
    assert order == [urgent, early, same_a, late]


async def test_a_job_not_due_stays_noticed_until_due(svc: Services) -> None:
    job_id = await submit(svc, not_before=svc.clock.now() + timedelta(minutes=5))
    assert await state(svc, job_id) is JobState.NOTICED
    reasons = (await svc.explainer.explain(job_id)).reasons
    assert [r.code for r in reasons] == ["not-due"]
    assert await svc.jobs.queue_due() == 0
    svc.clock.advance(timedelta(minutes=5))
    assert await svc.jobs.queue_due() == 1
    assert await state(svc, job_id) is JobState.QUEUED


# --- coalescing and duplicates ------------------------------------------------------


async def test_jobs_sharing_a_coalesce_key_never_build_at_once(svc: Services) -> None:
    first = await submit(svc, coalesce_keys=frozenset({"repo:x"}))
    second = await submit(svc, coalesce_keys=frozenset({"repo:x", "repo:y"}))
    third = await submit(svc, coalesce_keys=frozenset({"repo:z"}))
    runner = await svc.connect(capacity=3)
    claimed = {a.job.id: a.execution_id for a in await svc.jobs.claim([runner])}
    assert set(claimed) == {first, third}
    reasons = (await svc.explainer.explain(second)).reasons
    assert reasons[0].code == "coalesce"
    assert reasons[0].blocking_job_id == first
    assert "repo:x" in reasons[0].text
    await finish(svc, runner, claimed[first], Outcome.FAILED)
    assert [a.job.id for a in await svc.jobs.claim([runner])] == [second]


async def test_a_dedupe_key_waits_behind_an_active_job(svc: Services) -> None:
    first = await submit(svc, dedupe_key="tag:1.0")
    second = await submit(svc, dedupe_key="tag:1.0")
    assert await state(svc, second) is JobState.NOTICED
    reasons = (await svc.explainer.explain(second)).reasons
    assert [(r.code, r.blocking_job_id) for r in reasons] == [("dedupe", first)]


async def test_a_duplicate_of_an_uploaded_job_takes_its_status(svc: Services) -> None:
    first = await submit(svc, dedupe_key="tag:1.0")
    waiting = await submit(svc, dedupe_key="tag:1.0")
    runner = await svc.connect()
    job_id, execution = await claim_one(svc, runner)
    assert job_id == first
    await finish(svc, runner, execution, Outcome.SUCCEEDED)
    follower = await svc.jobs.get(waiting)
    assert (follower.state, follower.duplicate_of) == (JobState.SUCCEEDED, first)
    assert follower.events[-1].kind == "duplicate"
    # Later submissions become duplicates at once.
    late = await svc.jobs.get(await submit(svc, dedupe_key="tag:1.0"))
    assert (late.state, late.duplicate_of) == (JobState.SUCCEEDED, first)


async def test_an_irrecoverable_original_makes_duplicates_irrecoverable(svc: Services) -> None:
    first = await submit(svc, dedupe_key="k", on_lost=OnLostPolicy.IRRECOVERABLE)
    runner = await svc.connect()
    await claim_one(svc, runner)
    await svc.sessions.close(runner.session_id, "gone")
    assert await state(svc, first) is JobState.IRRECOVERABLE
    dup = await svc.jobs.get(await submit(svc, dedupe_key="k"))
    assert (dup.state, dup.duplicate_of) == (JobState.IRRECOVERABLE, first)


async def test_a_job_with_the_dedupe_key_of_a_failed_one_runs(svc: Services) -> None:
    first = await submit(svc, dedupe_key="tag:2.0")
    waiting = await submit(svc, dedupe_key="tag:2.0")
    runner = await svc.connect()
    _, execution = await claim_one(svc, runner)
    await finish(svc, runner, execution, Outcome.FAILED)
    assert await state(svc, first) is JobState.FAILED
    await svc.jobs.queue_due()
    assert await state(svc, waiting) is JobState.QUEUED
    fresh = await svc.jobs.get(await submit(svc, dedupe_key="tag:2.0"))
    assert fresh.state is JobState.NOTICED  # behind the one now queued
    assert fresh.duplicate_of is None


async def test_the_database_refuses_two_runnable_jobs_with_one_dedupe_key(
    svc: Services,
) -> None:
    from sqlalchemy.exc import IntegrityError

    from dispatcher.store import jobs as store

    await submit(svc, dedupe_key="k")

    def insert_second(conn: object) -> None:
        store.insert_jobs(
            conn,  # type: ignore[arg-type]
            [store.NewJob(spec(dedupe_key="k"), JobState.QUEUED)],
            svc.clock.now(),
        )

    with pytest.raises(IntegrityError):
        await svc.db.run(insert_second)


async def test_an_idempotency_key_returns_the_first_job(svc: Services) -> None:
    [(first, created)] = await svc.jobs.submit([spec(idempotency_key="req-1")], actor="t")
    [(again, created_again)] = await svc.jobs.submit([spec(idempotency_key="req-1")], actor="t")
    assert created
    assert not created_again
    assert again.id == first.id


# --- replay window and retention ----------------------------------------------------


async def test_origin_times_outside_the_replay_window_are_not_for_us(svc: Services) -> None:
    now = svc.clock.now()
    future = await svc.jobs.get(await submit(svc, origin_time=now + timedelta(minutes=6)))
    old = await svc.jobs.get(await submit(svc, origin_time=now - timedelta(days=2)))
    fine = await svc.jobs.get(await submit(svc, origin_time=now - timedelta(hours=1)))
    assert future.state is JobState.NOT_FOR_US
    assert "in the future (replay window)" in future.info
    assert old.state is JobState.NOT_FOR_US
    assert "in the past (replay window)" in old.info
    assert fine.state is JobState.QUEUED


async def test_finished_jobs_are_expired_after_the_retention(svc: Services) -> None:
    job_id = await svc.jobs.get(await submit(svc))
    await svc.jobs.cancel(job_id.id, actor="t", reason="")
    svc.clock.advance(timedelta(days=1, hours=23))
    assert await svc.jobs.expire_finished() == 0
    svc.clock.advance(timedelta(hours=2))
    assert await svc.jobs.expire_finished() == 1
    with pytest.raises(Exception, match="does not exist"):
        await svc.jobs.get(job_id.id)


def test_retention_shorter_than_the_replay_window_is_refused() -> None:
    with pytest.raises(InvalidInput, match="retention must be at least replay_max_age"):
        SchedulingRules(replay_max_age=timedelta(days=7), retention=timedelta(days=1))


# --- retries, back-offs, quarantine -------------------------------------------------


async def test_a_failed_job_is_retried_with_growing_delay(svc: Services) -> None:
    policy = RetryPolicy(
        max_attempts=3,
        initial_delay=timedelta(seconds=10),
        multiplier=3,
        max_delay=timedelta(seconds=20),
    )
    job_id = await submit(svc, retry=policy)
    runner = await svc.connect()
    delays = []
    for _ in range(2):
        _, execution = await claim_one(svc, runner)
        await finish(svc, runner, execution, Outcome.FAILED)
        job = await svc.jobs.get(job_id)
        assert job.state is JobState.NOTICED
        delays.append(job.spec.not_before - svc.clock.now())  # type: ignore[operator]
        svc.clock.advance(delays[-1])
        assert await svc.jobs.queue_due() == 1
    assert delays == [timedelta(seconds=10), timedelta(seconds=20)]
    _, execution = await claim_one(svc, runner)
    await finish(svc, runner, execution, Outcome.FAILED)
    job = await svc.jobs.get(job_id)
    assert (job.state, job.failures, job.attempt) == (JobState.FAILED, 3, 3)


async def test_a_lost_runner_does_not_spend_the_failure_budget(svc: Services) -> None:
    job_id = await submit(svc, on_lost=OnLostPolicy.REQUEUE, retry=RetryPolicy(max_lost=2))
    for n in range(3):
        runner = await svc.connect(f"r{n}")
        await claim_one(svc, runner)
        await svc.sessions.close(runner.session_id, "gone")
    job = await svc.jobs.get(job_id)
    assert (job.state, job.failures, job.losses) == (JobState.FAILED, 0, 3)
    assert "more than the limit of 2" in job.info


async def test_a_failure_backs_off_its_subject_for_every_job_on_it(svc: Services) -> None:
    failing = await submit(
        svc, subject="repo-a", process="import", failure_backoff=timedelta(minutes=10)
    )
    queued = await submit(svc, subject="repo-a", process="import")
    other = await submit(svc, subject="repo-b", process="import")
    runner = await svc.connect(capacity=1)
    job_id, execution = await claim_one(svc, runner)
    assert job_id == failing
    await finish(svc, runner, execution, Outcome.FAILED)
    assert await state(svc, queued) is JobState.NOTICED
    assert await state(svc, other) is JobState.QUEUED
    later = await submit(svc, subject="repo-a", process="import")
    assert await state(svc, later) is JobState.NOTICED
    [backoff] = await svc.backoffs.active()
    assert (backoff.subject, backoff.process, backoff.job_id) == ("repo-a", "import", failing)
    reasons = (await svc.explainer.explain(queued)).reasons
    assert [r.code for r in reasons] == ["back-off"]
    assert reasons[0].until == backoff.until
    await svc.backoffs.clear("repo-a", "import")
    assert await svc.jobs.queue_due() == 2
    assert await svc.backoffs.active() == []


async def test_a_runner_that_keeps_losing_executions_is_quarantined(svc: Services) -> None:
    await submit(svc, on_lost=OnLostPolicy.REQUEUE)
    for _ in range(2):
        runner = await svc.connect("flaky")
        await claim_one(svc, runner)
        await svc.sessions.close(runner.session_id, "stream died")
    runner = await svc.connect("flaky")
    assert await svc.jobs.claim([runner]) == []
    [listed] = await svc.sessions.list_runners()
    assert listed.quarantined_until == svc.clock.now() + timedelta(seconds=30)
    [job] = (await svc.jobs.page(JobFilter(), page_size=1, page_token="")).jobs
    history = await svc.jobs.history(job.id)
    assert any(e.kind == "runner-quarantined" and "flaky" in e.cause for e in history)
    svc.clock.advance(timedelta(seconds=31))
    assert len(await svc.jobs.claim([runner])) == 1


# --- schedules ----------------------------------------------------------------------


async def test_a_schedule_keeps_exactly_one_pending_job(svc: Services) -> None:
    created = await svc.schedules.create(
        ScheduleSpec("import-a", spec(), timedelta(hours=1), max_failures=2), actor="t"
    )
    assert created.pending_job_id is not None
    assert await svc.schedules.tick() == 0
    runner = await svc.connect()
    started = svc.clock.now()
    job_id, execution = await claim_one(svc, runner)
    assert job_id == created.pending_job_id
    await finish(svc, runner, execution, Outcome.SUCCEEDED)
    assert await svc.schedules.tick() == 1
    [schedule] = await svc.schedules.all()
    assert schedule.next_due_at == started + timedelta(hours=1)
    assert await state(svc, schedule.pending_job_id or 0) is JobState.NOTICED
    # Run now makes it due; two failures in a row stretch, then suspend it.
    await svc.schedules.run_now("import-a", actor="t")
    await svc.jobs.queue_due()
    _, execution = await claim_one(svc, runner)
    await finish(svc, runner, execution, Outcome.FAILED)
    await svc.schedules.tick()
    [schedule] = await svc.schedules.all()
    assert schedule.consecutive_failures == 1
    assert schedule.next_due_at == svc.clock.now() + timedelta(hours=2)
    await svc.schedules.run_now("import-a", actor="t")
    await svc.jobs.queue_due()
    _, execution = await claim_one(svc, runner)
    await finish(svc, runner, execution, Outcome.FAILED)
    await svc.schedules.tick()
    [schedule] = await svc.schedules.all()
    assert (schedule.state, schedule.pending_job_id) == (ScheduleState.SUSPENDED, None)
    resumed = await svc.schedules.resume("import-a", actor="t")
    assert resumed.state is ScheduleState.ACTIVE
    assert resumed.pending_job_id is not None
    paused = await svc.schedules.pause("import-a", actor="t")
    assert (paused.state, paused.pending_job_id) == (ScheduleState.PAUSED, None)
    with pytest.raises(Conflict):
        await svc.schedules.run_now("import-a", actor="t")


# --- timeouts -----------------------------------------------------------------------


async def test_a_job_never_started_within_max_wait_expires(svc: Services) -> None:
    job_id = await submit(svc, max_wait=timedelta(minutes=1))
    svc.clock.advance(timedelta(minutes=2))
    await svc.jobs.queue_due()
    job = await svc.jobs.get(job_id)
    assert job.state is JobState.FAILED
    assert job.info.startswith("expired")


async def test_a_job_running_past_max_run_is_cancelled_and_failed(svc: Services) -> None:
    job_id = await submit(svc, max_run=timedelta(seconds=30))
    runner = await svc.connect()
    _, execution = await claim_one(svc, runner)
    await svc.executions.accept(runner.session_id, "r1", execution)
    svc.clock.advance(timedelta(seconds=31))
    await svc.executions.heartbeat(runner.session_id, [])  # alive, just too slow
    report = await svc.sessions.sweep()
    assert [(c.session_id, c.execution_id) for c in report.cancels] == [
        (runner.session_id, execution)
    ]
    job = await svc.jobs.get(job_id)
    assert job.state is JobState.FAILED
    assert "timed out" in job.info
    late = await svc.executions.report_result(
        runner.session_id, "r1", ResultReport(execution, Outcome.SUCCEEDED)
    )
    assert not late.applied


# --- history and explain ------------------------------------------------------------


async def test_explain_counts_the_jobs_ahead_and_missing_runners(svc: Services) -> None:
    first = await submit(svc, labels=frozenset({"gpu"}))
    second = await submit(svc, labels=frozenset({"gpu"}))
    reasons = (await svc.explainer.explain(second)).reasons
    assert [r.code for r in reasons] == ["no-runner", "queue"]
    assert "no online runner with platform linux/x86_64 and labels [gpu]" in reasons[0].text
    assert reasons[1].text == "1 job(s) ahead of it in the queue"
    runner = await svc.connect("gpu1", labels=frozenset({"gpu"}))
    await claim_one(svc, runner)
    reasons = (await svc.explainer.explain(second)).reasons
    assert [r.code for r in reasons] == ["busy"]
    assert (await svc.explainer.explain(first)).reasons[0].code == "running"


async def test_history_has_who_when_from_to_and_cause(svc: Services) -> None:
    job_id = await submit(svc)
    await svc.jobs.cancel(job_id, actor="admin:alice", reason="not needed")
    history = await svc.jobs.history(job_id)
    assert [(e.kind, e.from_state, e.to_state) for e in history] == [
        ("submitted", None, JobState.QUEUED),
        ("cancelled", JobState.QUEUED, JobState.CANCELLED),
    ]
    assert (history[1].actor, history[1].cause) == ("admin:alice", "not needed")
