"""What lets the due loop and the deadline sweep sleep while idle, on both databases with
a manual clock: when the next job is due by time, when the next deadline falls, and the
signal each job that ends or waits again gives the due loop, whatever path moved it."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dispatcher.domain.model import JobSpec, ResultReport
from dispatcher.domain.states import JobState, Outcome
from dispatcher.lifecycle.due import DueTimes
from tests.support.services import Services

LINUX = "linux/x86_64"
IDLE_TIMEOUT = timedelta(seconds=1800)  # Deadlines() default
GRACE = timedelta(seconds=10)


@pytest.fixture
def due_signals(svc: Services) -> list[str]:
    """Each committed transaction that told the due loop something."""
    signals: list[str] = []
    svc.db.due_listeners.append(lambda: signals.append("due"))
    return signals


async def submit(svc: Services, **kw: object) -> int:
    kw.setdefault("platform", LINUX)
    kw.setdefault("command", ("true",))
    [(job, _)] = await svc.jobs.submit([JobSpec(**kw)], actor="test")  # type: ignore[arg-type]
    return job.id


async def test_the_next_due_time_is_the_first_due_job_expiry_or_back_off_end(
    svc: Services,
) -> None:
    due = DueTimes(svc.ctx)
    assert await due.next_in() is None  # nothing waits
    now = svc.clock.now()
    await submit(svc, not_before=now + timedelta(minutes=5))
    assert await due.next_in() == timedelta(minutes=5)
    await submit(svc, max_wait=timedelta(minutes=2))
    assert await due.next_in() == timedelta(minutes=2)
    # A job that failed backs its subject off; the back-off's end is the first moment.
    await submit(
        svc,
        platform="other/arch",
        subject="repo",
        process="import",
        failure_backoff=timedelta(seconds=40),
    )
    runner = await svc.connect(platform="other/arch")
    [assignment] = await svc.jobs.claim([runner])
    await svc.executions.report_result(
        runner.session_id, "r1", ResultReport(assignment.execution_id, Outcome.FAILED, "no")
    )
    assert await due.next_in() == timedelta(seconds=40)
    # Past every moment, only what is still ahead counts.
    svc.clock.advance(timedelta(minutes=3))
    assert await due.next_in() == timedelta(minutes=2)


async def test_every_job_that_ends_or_waits_again_signals_the_due_loop(
    svc: Services, due_signals: list[str]
) -> None:
    waiting = await submit(svc)
    assert due_signals == []  # queued: the assigners' business, not the due loop's
    await svc.jobs.cancel(waiting, actor="test", reason="not wanted")
    assert due_signals == ["due"]  # a cancel, which calls no wake-up of its own

    # A job ended by the deadline sweep (past its max_run): what once relied on the
    # due loop looking every second.
    overrun = await submit(svc, max_run=timedelta(seconds=30))
    runner = await svc.connect()
    [assignment] = await svc.jobs.claim([runner])
    assert assignment.job.id == overrun
    await svc.executions.accept(runner.session_id, "r1", assignment.execution_id)
    due_signals.clear()
    svc.clock.advance(timedelta(seconds=31))
    await svc.sessions.sweep(heard=[runner.session_id])
    assert (await svc.jobs.get(overrun)).state is JobState.FAILED
    assert due_signals == ["due"]

    # A job expired by the due loop itself: the loop learns it made work for itself
    # (a schedule's next run, a job behind its dedupe key).
    expiring = await submit(svc, platform="other/arch", max_wait=timedelta(minutes=1))
    due_signals.clear()
    svc.clock.advance(timedelta(minutes=2))
    await svc.jobs.queue_due()
    assert (await svc.jobs.get(expiring)).state is JobState.FAILED
    assert due_signals == ["due"]


async def test_with_nothing_in_flight_the_sweep_knows_its_next_deadline(svc: Services) -> None:
    report = await svc.sessions.sweep()
    assert not report.in_flight
    # No session: one opened from now on is judged silent no earlier than this.
    assert report.next_deadline == svc.clock.now() + IDLE_TIMEOUT

    idle = await svc.connect("idle")
    svc.clock.advance(timedelta(minutes=10))
    report = await svc.sessions.sweep()
    assert not report.in_flight
    assert report.next_deadline == svc.clock.now() - timedelta(minutes=10) + IDLE_TIMEOUT
    # Heard from: its silence is judged from now.
    report = await svc.sessions.sweep(heard=[idle.session_id])
    assert report.next_deadline == svc.clock.now() + IDLE_TIMEOUT


async def test_a_building_job_puts_the_sweep_in_flight_until_it_ends(svc: Services) -> None:
    await submit(svc)
    runner = await svc.connect()
    [assignment] = await svc.jobs.claim([runner])
    assert (await svc.sessions.sweep()).in_flight
    await svc.executions.report_result(
        runner.session_id, "r1", ResultReport(assignment.execution_id, Outcome.SUCCEEDED)
    )
    assert not (await svc.sessions.sweep()).in_flight


async def test_a_quarantine_end_and_a_re_attach_grace_bound_the_quiet_sleep(
    svc: Services,
) -> None:
    # A runner that keeps losing executions is quarantined; nothing else is in flight.
    await submit(svc)
    for _ in range(svc.ctx.rules.quarantine_after):
        runner = await svc.connect("flaky")
        await svc.jobs.claim([runner])
        await svc.sessions.close(runner.session_id, "stream died")
    [listed] = await svc.sessions.list_runners()
    assert listed.quarantined_until is not None
    report = await svc.sessions.sweep()
    assert not report.in_flight
    assert report.next_deadline == listed.quarantined_until

    # A stream that broke while holding a job: building, so in flight; once its job is
    # gone elsewhere (cancelled), the session's re-attach grace still bounds the sleep.
    svc.clock.advance(timedelta(hours=2))
    job_id = await submit(svc)
    holder = await svc.connect("holder")
    [assignment] = await svc.jobs.claim([holder])
    assert await svc.sessions.detach(holder.session_id, "stream broken")
    detached_at = svc.clock.now()
    assert (await svc.sessions.sweep()).in_flight
    await svc.jobs.cancel(job_id, actor="test", reason="")
    await svc.executions.cancel_ack(holder.session_id, "holder", assignment.execution_id)
    report = await svc.sessions.sweep()
    assert not report.in_flight
    assert report.next_deadline == detached_at + GRACE
