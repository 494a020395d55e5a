"""What runners report about the executions they hold: accept, refuse, heartbeat,
commit point, cancel-ack, result. Every report is fenced: it applies only to an open
execution of the reporting session that is still its job's current execution; anything
else is refused and recorded in the job's history."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection

from dispatcher.domain.errors import InvalidInput
from dispatcher.domain.model import Job, ResultReport, Verdict
from dispatcher.domain.rules import retry_delay
from dispatcher.domain.states import (
    CONFIRM_CANCEL,
    FAIL,
    HOLD,
    OUTCOME_TRANSITIONS,
    REFUSE,
    RETRY,
    JobState,
    Outcome,
    Transition,
)
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.messages import WAKE, announce
from dispatcher.lifecycle.transitions import apply, count_runner_loss, event_row, refuse_stale
from dispatcher.store import backoffs as backoff_store
from dispatcher.store import events as event_store
from dispatcher.store import executions as execution_store
from dispatcher.store import jobs as store
from dispatcher.store import reports as report_store
from dispatcher.store import runners as runner_store
from dispatcher.store.reports import Reported

# The work a fenced report does once its execution is known to speak for its job.
Act = Callable[[Connection, Reported, datetime], Verdict]


@dataclass(frozen=True)
class _Report:
    """An accept (no result) or a result, as the group commit batches them."""

    session_id: int
    runner: str
    execution_id: int
    result: ResultReport | None = None


@dataclass(frozen=True)
class _Beat:
    """A heartbeat: the session is alive; (execution id, logtail, progress) of each of
    its executions that has news."""

    session_id: int
    progress: tuple[tuple[int, str | None, int | None], ...]


# A report's verdict, and whether it may have made waiting jobs ready.
_Applied = tuple[Verdict, bool]
# What a batch answers for a heartbeat.
_HEARD: _Applied = (Verdict(True), False)


class Executions:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def _fenced(
        self, session_id: int, runner: str, execution_id: int, what: str, act: Act
    ) -> Verdict:
        """Run ``act`` in a group commit if ``execution_id`` may still speak for its job;
        otherwise return (and record) the refusal."""

        def work(conn: Connection) -> Verdict:
            now = self._ctx.clock.now()
            fenced = _fence(conn, session_id, execution_id, now, runner, what)
            if isinstance(fenced, Verdict):
                return fenced
            return act(conn, fenced, now)

        return await self._ctx.commits.submit(work)

    async def report_result(self, session_id: int, runner: str, report: ResultReport) -> Verdict:
        if report.outcome not in OUTCOME_TRANSITIONS:
            raise InvalidInput(
                "result.outcome must be SUCCEEDED, FAILED or IRRECOVERABLE, "
                f"not {report.outcome.value}"
            )
        item = _Report(session_id, runner, report.execution_id, report)
        applied: _Applied = await self._ctx.commits.submit_item(self, item)
        verdict, frees_waiting = applied
        if verdict.applied and frees_waiting:
            self._ctx.wake_due()
        elif verdict.applied:
            self._ctx.changes.fire()
        return verdict

    async def accept(self, session_id: int, runner: str, execution_id: int) -> Verdict:
        """Record that the runner started the execution."""
        applied: _Applied = await self._ctx.commits.submit_item(
            self, _Report(session_id, runner, execution_id)
        )
        return applied[0]

    def run_batch(self, conn: Connection, items: Sequence[_Report | _Beat]) -> list[_Applied]:
        """Apply a batch of accepts and results in order, in the group commit's
        transaction. One read fences them all; the accepts and the plain ends of jobs
        are written a statement per batch. Anything else (a refusal to record, a
        failure to count, rows waiting on the job) takes the per-report path, after the
        batch's writes so far, so it reads what they wrote."""
        now = self._ctx.clock.now()
        reports = [i for i in items if isinstance(i, _Report)]
        found = report_store.fences(conn, {i.execution_id for i in reports if i.execution_id > 0})
        stale: set[int] = set()
        accepts: list[int] = []
        done: list[report_store.Finished] = []
        heard: set[int] = set()

        def flush() -> None:
            report_store.accept_executions(conn, accepts, now)
            report_store.finish(conn, done, now)
            accepts.clear()
            done.clear()

        out: list[_Applied] = []
        for item in items:
            if isinstance(item, _Beat):
                heard.add(item.session_id)
                if item.progress:
                    # Written after the batch's ends so far: an execution a result ended
                    # keeps the result's logtail.
                    flush()
                    execution_store.touch_executions(conn, item.session_id, item.progress, now)
                out.append(_HEARD)
                continue
            execution_id = item.execution_id
            if execution_id in stale:
                flush()
                stale.discard(execution_id)
                found.update(report_store.fences(conn, [execution_id]))
            fence = found.get(execution_id)
            if fence is not None and _speaks(fence, execution_id, item.session_id):
                if item.result is None:
                    if not fence.accepted:
                        accepts.append(execution_id)
                        found[execution_id] = replace(fence, accepted=True)
                    out.append((Verdict(True, job_id=fence.job_id), False))
                    continue
                if item.result.outcome is not Outcome.FAILED and not fence.others_wait:
                    state = OUTCOME_TRANSITIONS[item.result.outcome].target
                    done.append(_finished(fence, item.result, state))
                    if fence.holds_keys:
                        announce(conn, WAKE)  # jobs waiting on its keys may run anywhere
                    event_store.insert_events(conn, [_end_event(fence, item, state, now)])
                    found[execution_id] = replace(fence, finished=True, state=state)
                    out.append((Verdict(True, job_id=fence.job_id, new_state=state), False))
                    continue
            flush()
            stale.add(execution_id)
            if item.result is None:
                out.append((self._accept_one(conn, item, now), False))
            else:
                out.append(self._result_one(conn, item, item.result, now))
        flush()
        report_store.touch_sessions(conn, heard, now)
        return out

    def _accept_one(self, conn: Connection, item: _Report, now: datetime) -> Verdict:
        fenced = _fence(conn, item.session_id, item.execution_id, now, item.runner, "accept")
        if isinstance(fenced, Verdict):
            return fenced
        execution_store.mark_execution(conn, item.execution_id, "accepted_at", now)
        return Verdict(True, job_id=fenced.job.id)

    def _result_one(
        self, conn: Connection, item: _Report, report: ResultReport, now: datetime
    ) -> _Applied:
        """A result the batch does not write itself; also whether the job's end may make
        waiting jobs ready (its dedupe key is free, its schedule needs a next run)."""
        runner = item.runner
        fenced = _fence(conn, item.session_id, report.execution_id, now, runner, "result")
        if isinstance(fenced, Verdict):
            return fenced, False
        job = fenced.job
        actor = f"runner:{runner}"
        frees_waiting = bool(job.spec.dedupe_key or job.schedule)
        execution_store.finish_execution(
            conn,
            report.execution_id,
            report.outcome,
            now,
            info=report.info,
            logtail=report.logtail,
            result=report.data,
        )
        if fenced.runner_on_probation:
            runner_store.count_good_report(conn, runner)
        if report.outcome is not Outcome.FAILED:
            transition = OUTCOME_TRANSITIONS[report.outcome]
            apply(conn, job, transition, now, actor=actor, cause=report.info)
            return Verdict(True, job_id=job.id, new_state=transition.target), frees_waiting
        transition = fail_or_retry(conn, job, report.info, now, actor)
        if job.spec.failure_backoff is not None and job.spec.subject:
            back_off(conn, job, now + job.spec.failure_backoff, report.info, now, actor)
        return Verdict(True, job_id=job.id, new_state=transition.target), frees_waiting

    async def commit_point(self, session_id: int, runner: str, execution_id: int) -> Verdict:
        def act(conn: Connection, found: Reported, now: datetime) -> Verdict:
            job = found.job
            if execution_store.mark_execution(conn, execution_id, "committed_at", now):
                event = event_row(
                    job.id,
                    "commit-point",
                    now,
                    actor=f"runner:{runner}",
                    cause="the irreversible step started",
                    execution_id=execution_id,
                )
                event_store.insert_events(conn, [event])
            return Verdict(True, job_id=job.id)

        return await self._fenced(session_id, runner, execution_id, "commit point", act)

    async def refuse(self, session_id: int, runner: str, execution_id: int, reason: str) -> Verdict:
        cause = f"refused by runner {runner}: {reason or 'no reason given'}"

        def act(conn: Connection, found: Reported, now: datetime) -> Verdict:
            job = found.job
            execution_store.finish_execution(conn, execution_id, Outcome.LOST, now, info=cause)
            apply(conn, job, REFUSE, now, actor=f"runner:{runner}", cause=cause)
            count_runner_loss(conn, runner, job.id, now, self._ctx.rules)
            return Verdict(True, job_id=job.id, new_state=JobState.QUEUED)

        verdict = await self._fenced(session_id, runner, execution_id, "refusal", act)
        if verdict.applied:
            self._ctx.wake()
        return verdict

    async def cancel_ack(self, session_id: int, runner: str, execution_id: int) -> Verdict:
        def act(conn: Connection, found: Reported, now: datetime) -> Verdict:
            job = found.job
            cause = "the runner stopped it" if job.cancel_requested else "stopped by the runner"
            execution_store.finish_execution(conn, execution_id, Outcome.CANCELLED, now, info=cause)
            apply(conn, job, CONFIRM_CANCEL, now, actor=f"runner:{runner}", cause=cause)
            return Verdict(True, job_id=job.id, new_state=JobState.CANCELLED)

        return await self._fenced(session_id, runner, execution_id, "cancel-ack", act)

    async def heartbeat(
        self,
        session_id: int,
        progress: Sequence[tuple[int, str | None, int | None]],
    ) -> None:
        await self._ctx.commits.submit_item(self, _Beat(session_id, tuple(progress)))


def fail_or_retry(conn: Connection, job: Job, info: str, now: datetime, actor: str) -> Transition:
    """SPEC §5.6: a runner-reported failure spends one of the job's attempts; with
    attempts left the job waits out its retry delay, otherwise it is FAILED."""
    policy = job.spec.retry
    failures = job.failures + 1
    if failures >= policy.max_attempts:
        cause = (
            info
            if policy.max_attempts == 1
            else f"{info}; failed {failures} times, every attempt spent"
        )
        apply(conn, job, FAIL, now, actor=actor, cause=cause, count="failures")
        return FAIL
    due = now + retry_delay(policy, failures)
    cause = (
        f"{info or 'failed'}; failure {failures} of {policy.max_attempts} allowed, "
        f"retry at {due.isoformat()}"
    )
    apply(conn, job, RETRY, now, actor=actor, cause=cause, count="failures", not_before=due)
    return RETRY


def back_off(
    conn: Connection, job: Job, until: datetime, info: str, now: datetime, actor: str
) -> None:
    """Write the (subject, process) back-off of a failing job and hold every queued job
    on the pair until it ends."""
    spec = job.spec
    cause = f"job {job.id} failed: {info or 'no reason given'}"
    in_force = backoff_store.upsert_backoff(
        conn, spec.subject, spec.process, until, cause, job.id, now
    )
    hold = f"back-off on {spec.subject}/{spec.process} until {in_force.isoformat()}: {cause}"
    for waiting in store.waiting_jobs_on(conn, spec.subject, spec.process, JobState.QUEUED):
        apply(conn, waiting, HOLD, now, actor=actor, cause=hold)


def _fence(
    conn: Connection, session_id: int, execution_id: int, now: datetime, runner: str, what: str
) -> Reported | Verdict:
    """The job when ``execution_id`` may speak for it; otherwise the refusal (recorded
    in the job's history when the job exists)."""
    if execution_id <= 0:
        return Verdict(False, f"{what} without an execution id refused")
    found = report_store.reported(conn, [execution_id]).get(execution_id)
    if found is None:
        return Verdict(False, f"execution {execution_id} does not exist; {what} refused")
    job = found.job
    actor = f"runner:{runner}"
    if (
        job.state is not JobState.BUILDING
        or job.current_execution_id != execution_id
        or (found.finished)
    ):
        reason = refuse_stale(conn, job.id, execution_id, now, actor=actor, what=what)
        return Verdict(False, reason, job_id=job.id)
    if found.session_id != session_id:
        reason = refuse_stale(
            conn, job.id, execution_id, now, actor=actor, what=f"{what} from another session"
        )
        return Verdict(False, reason, job_id=job.id)
    return found


def _speaks(fence: report_store.Fence, execution_id: int, session_id: int) -> bool:
    """The execution is open, its job's current one, and held by the reporting session."""
    return (
        fence.state is JobState.BUILDING
        and fence.current_execution_id == execution_id
        and not fence.finished
        and fence.session_id == session_id
    )


def _finished(
    fence: report_store.Fence, report: ResultReport, state: JobState
) -> report_store.Finished:
    return report_store.Finished(
        execution_id=report.execution_id,
        job_id=fence.job_id,
        outcome=report.outcome,
        state=state,
        info=report.info,
        logtail=report.logtail,
        result=report.data,
        holds_keys=fence.holds_keys,
    )


def _end_event(
    fence: report_store.Fence, item: _Report, state: JobState, now: datetime
) -> dict[str, object]:
    assert item.result is not None
    return event_row(
        fence.job_id,
        OUTCOME_TRANSITIONS[item.result.outcome].event,
        now,
        actor=f"runner:{item.runner}",
        cause=item.result.info,
        execution_id=item.execution_id,
        from_state=JobState.BUILDING,
        to_state=state,
    )
