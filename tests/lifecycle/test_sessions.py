"""Streams that break, runners that come back, deadlines that pass (SPEC §5.7, §5.8, §6),
on both databases with a manual clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dispatcher.domain.errors import NotFound
from dispatcher.domain.model import ResultReport, RunnerHello, RunnerState
from dispatcher.domain.states import JobState, OnLostPolicy, Outcome
from dispatcher.store import runners as runner_store
from dispatcher.store.database import Database
from tests.support.services import Services, services

LINUX = "linux/x86_64"
GRACE = timedelta(seconds=10)  # Deadlines() defaults
HEARTBEAT_TIMEOUT = timedelta(seconds=30)


async def submit(svc: Services, policy: OnLostPolicy = OnLostPolicy.REQUEUE) -> int:
    from dispatcher.domain.model import JobSpec

    [(job, _)] = await svc.jobs.submit(
        [JobSpec(platform=LINUX, command=("true",), on_lost=policy)], actor="admin"
    )
    return job.id


async def state(svc: Services, job_id: int) -> JobState:
    return (await svc.jobs.get(job_id)).state


async def test_a_runner_that_re_attaches_within_the_grace_keeps_its_job(svc: Services) -> None:
    job_id = await submit(svc)
    first = await svc.connect("r1")
    [a] = await svc.jobs.claim([first])
    assert await svc.sessions.detach(first.session_id, "stream broken")
    svc.clock.advance(GRACE / 2)
    assert (await svc.sessions.sweep()).closed_sessions == []
    assert await state(svc, job_id) is JobState.BUILDING  # bound, not re-run

    token = svc.resume_tokens["r1"]
    again = await svc.sessions.open(
        RunnerHello(name="r1", platform=LINUX, labels=frozenset(), capacity=1, resume_token=token)
    )
    assert again.reattached == (a.execution_id,)
    svc.clock.advance(GRACE)
    assert (await svc.sessions.sweep()).closed_sessions == []
    verdict = await svc.executions.report_result(
        again.session_id, "r1", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert verdict.applied
    assert await state(svc, job_id) is JobState.SUCCEEDED


async def test_after_the_grace_the_on_lost_policy_decides(svc: Services) -> None:
    requeue = await submit(svc, OnLostPolicy.REQUEUE)
    doomed = await submit(svc, OnLostPolicy.IRRECOVERABLE)
    runner = await svc.connect("r1", capacity=2)
    await svc.jobs.claim([runner])
    await svc.sessions.detach(runner.session_id, "stream broken")
    svc.clock.advance(GRACE + timedelta(milliseconds=1))
    report = await svc.sessions.sweep()
    assert report.closed_sessions == [runner.session_id]
    assert await state(svc, requeue) is JobState.QUEUED
    assert await state(svc, doomed) is JobState.IRRECOVERABLE
    history = (await svc.jobs.get(doomed)).events
    assert "did not re-attach within the grace" in history[-1].cause


async def test_a_wrong_resume_token_gets_nothing_back(svc: Services) -> None:
    job_id = await submit(svc)
    first = await svc.connect("r1")
    await svc.jobs.claim([first])
    await svc.sessions.detach(first.session_id, "stream broken")
    opened = await svc.sessions.open(
        RunnerHello(
            name="r1", platform=LINUX, labels=frozenset(), capacity=1, resume_token="forged"
        )
    )
    assert opened.reattached == ()
    # Same name, no valid token: the old session is replaced and its job decided.
    assert opened.replaced == (first.session_id,)
    assert await state(svc, job_id) is JobState.QUEUED


async def test_a_detached_session_without_jobs_closes_at_once(svc: Services) -> None:
    runner = await svc.connect("idle")
    assert not await svc.sessions.detach(runner.session_id, "stream broken")
    [listed] = await svc.sessions.list_runners()
    assert listed.state is RunnerState.OFFLINE


async def test_a_silent_session_is_dead_after_the_heartbeat_timeout(svc: Services) -> None:
    job_id = await submit(svc)
    runner = await svc.connect("r1")
    [a] = await svc.jobs.claim([runner])
    await svc.executions.accept(runner.session_id, "r1", a.execution_id)
    svc.clock.advance(HEARTBEAT_TIMEOUT / 2)
    await svc.executions.heartbeat(runner.session_id, [(a.execution_id, "building...", 40)])
    svc.clock.advance(HEARTBEAT_TIMEOUT / 2 + timedelta(seconds=1))
    assert (await svc.sessions.sweep()).closed_sessions == []  # the heartbeat renewed it
    svc.clock.advance(HEARTBEAT_TIMEOUT)
    assert (await svc.sessions.sweep()).closed_sessions == [runner.session_id]
    job = await svc.jobs.get(job_id)
    assert job.state is JobState.QUEUED
    assert job.executions[0].logtail == "building..."
    assert "no heartbeat within the deadline" in job.events[-1].cause
    # Its late result is refused, not applied.
    late = await svc.executions.report_result(
        runner.session_id, "r1", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert not late.applied
    assert await state(svc, job_id) is JobState.QUEUED


async def test_an_assignment_not_accepted_in_time_is_taken_back(svc: Services) -> None:
    job_id = await submit(svc)
    runner = await svc.connect("r1")
    [a] = await svc.jobs.claim([runner])
    svc.clock.advance(timedelta(seconds=29))
    await svc.executions.heartbeat(runner.session_id, [])
    assert (await svc.sessions.sweep()).cancels == []
    svc.clock.advance(timedelta(seconds=2))
    await svc.executions.heartbeat(runner.session_id, [])
    report = await svc.sessions.sweep()
    assert [c.execution_id for c in report.cancels] == [a.execution_id]
    assert await state(svc, job_id) is JobState.QUEUED


async def test_an_accepted_assignment_stays(svc: Services) -> None:
    job_id = await submit(svc)
    runner = await svc.connect("r1")
    [a] = await svc.jobs.claim([runner])
    assert (await svc.executions.accept(runner.session_id, "r1", a.execution_id)).applied
    svc.clock.advance(timedelta(seconds=29))
    await svc.executions.heartbeat(runner.session_id, [])
    svc.clock.advance(timedelta(seconds=29))
    await svc.executions.heartbeat(runner.session_id, [])
    assert (await svc.sessions.sweep()).cancels == []
    assert await state(svc, job_id) is JobState.BUILDING


async def test_a_cancel_the_runner_ignores_is_forced_after_the_grace(svc: Services) -> None:
    job_id = await submit(svc)
    runner = await svc.connect("r1")
    [a] = await svc.jobs.claim([runner])
    await svc.executions.accept(runner.session_id, "r1", a.execution_id)
    await svc.jobs.cancel(job_id, actor="admin", reason="stop")
    svc.clock.advance(timedelta(seconds=11))
    await svc.executions.heartbeat(runner.session_id, [])
    report = await svc.sessions.sweep()
    assert [c.execution_id for c in report.cancels] == [a.execution_id]
    job = await svc.jobs.get(job_id)
    assert job.state is JobState.CANCELLED
    assert job.executions[0].outcome is Outcome.CANCELLED
    late = await svc.executions.report_result(
        runner.session_id, "r1", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert not late.applied  # fenced


async def test_sessions_of_a_dead_replica_detach_then_follow_the_rule(db: Database) -> None:
    async with services(db, replica_id="dead") as dead:
        job_id = await submit(dead, OnLostPolicy.IRRECOVERABLE)
        runner = await dead.connect()
        await dead.jobs.claim([runner])
    async with services(db, replica_id="survivor") as survivor:
        survivor.clock.advance(timedelta(seconds=5))
        await survivor.sessions.sweep()
        assert await state(survivor, job_id) is JobState.BUILDING  # the lease still holds
        survivor.clock.advance(timedelta(seconds=11))  # lease (15 s) over: detached now
        await survivor.sessions.sweep()
        assert await state(survivor, job_id) is JobState.BUILDING  # the grace runs
        survivor.clock.advance(GRACE + timedelta(seconds=1))
        await survivor.sessions.sweep()
        job = await survivor.jobs.get(job_id)
        assert job.state is JobState.IRRECOVERABLE


async def test_drain_and_undrain(svc: Services) -> None:
    await svc.connect("r1")
    with pytest.raises(NotFound, match="'nobody' is not known"):
        await svc.sessions.set_draining("nobody", True)
    await svc.sessions.set_draining("r1", True)
    [runner] = await svc.sessions.list_runners()
    assert runner.state is RunnerState.DRAINING
    # Draining survives a reconnect.
    again = await svc.sessions.open(
        RunnerHello(name="r1", platform=LINUX, labels=frozenset(), capacity=1)
    )
    assert again.draining
    await svc.sessions.set_draining("r1", False)
    [runner] = await svc.sessions.list_runners()
    assert runner.state is RunnerState.ONLINE


LEASE = timedelta(seconds=15)  # Deadlines() default


async def test_the_grace_of_a_dead_replicas_sessions_runs_from_the_end_of_its_lease(
    db: Database,
) -> None:
    async with services(db, replica_id="dead") as dead:
        job_id = await submit(dead, OnLostPolicy.IRRECOVERABLE)
        runner = await dead.connect()
        await dead.jobs.claim([runner])
    async with services(db, replica_id="survivor") as survivor:
        # The survivor looks only 5 s after the lease ended ...
        survivor.clock.advance(LEASE + timedelta(seconds=5))
        await survivor.sessions.sweep()
        assert await state(survivor, job_id) is JobState.BUILDING
        # ... yet the grace ran from the end of the lease, not from that look.
        survivor.clock.advance(GRACE - timedelta(seconds=5) + timedelta(milliseconds=1))
        assert (await survivor.sessions.sweep()).closed_sessions == [runner.session_id]
        assert await state(survivor, job_id) is JobState.IRRECOVERABLE


async def test_a_replica_that_stood_still_past_its_lease_takes_its_sessions_back(
    db: Database,
) -> None:
    async with services(db, replica_id="slow") as slow:
        job_id = await submit(slow, OnLostPolicy.IRRECOVERABLE)
        runner = await slow.connect()
        await slow.jobs.claim([runner])
        async with services(db, replica_id="other") as other:
            other.clock.advance(LEASE + timedelta(seconds=1))
            await other.sessions.sweep()  # "slow" looks dead: its session is detached
            # "slow" was only frozen; it still holds the stream, and renews its lease.
            slow.clock.advance(LEASE + timedelta(seconds=2))
            assert await slow.sessions.renew_lease({runner.session_id}) == [runner.session_id]
            assert await slow.sessions.renew_lease({runner.session_id}) == []
            other.clock.advance(GRACE + timedelta(seconds=1))
            assert (await other.sessions.sweep()).closed_sessions == []
            assert await state(other, job_id) is JobState.BUILDING  # not reclaimed


async def test_a_detach_committed_just_after_the_renewal_is_taken_back_by_the_next(
    db: Database,
) -> None:
    async with services(db, replica_id="slow") as slow:
        job_id = await submit(slow, OnLostPolicy.IRRECOVERABLE)
        runner = await slow.connect()
        await slow.jobs.claim([runner])
        lease_end = await db.run(lambda conn: runner_store.replica_lease_until(conn, "slow"))
        assert lease_end is not None
        slow.clock.advance(LEASE + timedelta(seconds=2))
        # "slow" wakes and renews first: nothing was detached yet ...
        assert await slow.sessions.renew_lease({runner.session_id}) == []
        # ... then another replica's sweep, which read the lapsed lease before that
        # renewal committed, detaches the session at the lease's end.
        assert await db.run(
            lambda conn: runner_store.detach_session(conn, runner.session_id, lease_end)
        )
        assert await slow.sessions.renew_lease({runner.session_id}) == [runner.session_id]
        async with services(db, replica_id="other") as other:
            other.clock.advance(LEASE + GRACE + timedelta(seconds=1))  # past the old grace
            assert (await other.sessions.sweep()).closed_sessions == []
            assert await state(other, job_id) is JobState.BUILDING


async def test_a_sweep_after_standing_still_does_not_judge_silence(svc: Services) -> None:
    job_id = await submit(svc)
    runner = await svc.connect("r1")
    [a] = await svc.jobs.claim([runner])
    await svc.executions.accept(runner.session_id, "r1", a.execution_id)
    svc.clock.advance(HEARTBEAT_TIMEOUT + timedelta(seconds=1))
    # Its heartbeats may be waiting, unread, in the stream: not closed yet.
    assert (await svc.sessions.sweep(judge_silence=False)).closed_sessions == []
    assert (await svc.sessions.sweep()).closed_sessions == [runner.session_id]
    assert await state(svc, job_id) is JobState.QUEUED


async def test_an_idle_session_may_stay_silent_longer_than_a_busy_one(svc: Services) -> None:
    idle_timeout = svc.ctx.deadlines.idle_heartbeat_timeout
    idle = await svc.connect("idle")
    busy = await svc.connect("busy")
    await submit(svc)
    [a] = await svc.jobs.claim([busy])
    await svc.executions.accept(busy.session_id, "busy", a.execution_id)
    svc.clock.advance(HEARTBEAT_TIMEOUT + timedelta(seconds=1))
    # Silent past the heartbeat timeout while holding work: dead. Holding nothing: not.
    assert (await svc.sessions.sweep()).closed_sessions == [busy.session_id]

    # Work given now to a runner that was idle and quiet is not held against it...
    await submit(svc)
    [b] = await svc.jobs.claim([idle])
    assert (await svc.executions.accept(idle.session_id, "idle", b.execution_id)).applied
    assert (await svc.sessions.sweep()).closed_sessions == []
    # ...but from then on it must speak within the heartbeat timeout (the accept was
    # not a heartbeat): a message the hub heard counts, written by the sweep that judges.
    svc.clock.advance(HEARTBEAT_TIMEOUT - timedelta(seconds=1))
    assert (await svc.sessions.sweep(heard=[idle.session_id])).closed_sessions == []
    svc.clock.advance(HEARTBEAT_TIMEOUT - timedelta(seconds=1))
    assert (await svc.sessions.sweep()).closed_sessions == []
    svc.clock.advance(timedelta(seconds=2))
    assert (await svc.sessions.sweep()).closed_sessions == [idle.session_id]

    quiet = await svc.connect("quiet")
    svc.clock.advance(idle_timeout - timedelta(seconds=1))
    assert (await svc.sessions.sweep()).closed_sessions == []
    svc.clock.advance(timedelta(seconds=2))
    assert (await svc.sessions.sweep()).closed_sessions == [quiet.session_id]
    assert b.execution_id != a.execution_id


async def test_a_dead_replicas_sessions_detach_beside_the_survivors_own(db: Database) -> None:
    async with services(db, replica_id="b-dead") as dead:
        lost = await dead.connect("lost")
    async with services(db, replica_id="a-survivor") as survivor:
        own = await survivor.connect("own")
        survivor.clock.advance(LEASE + timedelta(seconds=1))
        await survivor.sessions.sweep(heard=[own.session_id])
        # Only the dead replica's session detached (it held nothing: it closes at
        # once after the grace); the survivor's own stream is untouched.
        survivor.clock.advance(GRACE)
        report = await survivor.sessions.sweep(heard=[own.session_id])
        assert report.closed_sessions == [lost.session_id]
        states = await survivor.sessions.look([own.session_id])
        assert states.closed == frozenset()


async def test_a_look_finds_a_stream_closed_though_another_open_one_is_not_held(
    svc: Services,
) -> None:
    held = await svc.connect("held")
    stray = await svc.connect("stray")  # open in the database, no stream here
    assert (await svc.sessions.look([held.session_id])).closed == frozenset()
    await svc.sessions.close(held.session_id, "evicted")
    # As many open sessions as held streams, but not the same ones.
    states = await svc.sessions.look([held.session_id])
    assert states.closed == frozenset({held.session_id})
    assert stray.session_id not in states.closed


@pytest.mark.parametrize("listed", [True, False])
async def test_a_look_finds_the_streams_of_draining_runners(
    svc: Services, listed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher.store import runners as runner_store

    if not listed:  # as with more draining runners than are named in one query
        monkeypatch.setattr(runner_store, "MAX_NAMES_LISTED", 0)
    drained = await svc.connect("drained")
    working = await svc.connect("working")
    await svc.sessions.set_draining("drained", True)
    states = await svc.sessions.look([drained.session_id, working.session_id])
    assert states.draining == frozenset({drained.session_id})
    assert states.closed == frozenset()
