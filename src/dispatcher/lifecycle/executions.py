"""What runners report about the executions they hold: accept, refuse, heartbeat,
commit point, cancel-ack, result. Every report is fenced: it applies only to an open
execution of the reporting session that is still its job's current execution; anything
else is refused and recorded in the job's history."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
from dispatcher.lifecycle.transitions import apply, count_runner_loss, event_row, refuse_stale
from dispatcher.store import backoffs as backoff_store
from dispatcher.store import jobs as store
from dispatcher.store import runners as runner_store
from dispatcher.store.jobs import Reported

# The work a fenced report does once its execution is known to speak for its job.
Act = Callable[[Connection, Reported, datetime], Verdict]


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
        actor = f"runner:{runner}"
        # Whether the job's end may make waiting jobs ready (its dedupe key is free, its
        # schedule needs a next run): then the due loop runs at once.
        frees_waiting = False

        def act(conn: Connection, found: Reported, now: datetime) -> Verdict:
            job = found.job
            nonlocal frees_waiting
            frees_waiting = bool(job.spec.dedupe_key or job.schedule)
            store.finish_execution(
                conn,
                report.execution_id,
                report.outcome,
                now,
                info=report.info,
                logtail=report.logtail,
                result=report.data,
            )
            if found.runner_on_probation:
                runner_store.count_good_report(conn, runner)
            if report.outcome is not Outcome.FAILED:
                transition = OUTCOME_TRANSITIONS[report.outcome]
                apply(conn, job, transition, now, actor=actor, cause=report.info)
                return Verdict(True, job_id=job.id, new_state=transition.target)
            transition = fail_or_retry(conn, job, report.info, now, actor)
            if job.spec.failure_backoff is not None and job.spec.subject:
                back_off(conn, job, now + job.spec.failure_backoff, report.info, now, actor)
            return Verdict(True, job_id=job.id, new_state=transition.target)

        verdict = await self._fenced(session_id, runner, report.execution_id, "result", act)
        if verdict.applied and frees_waiting:
            self._ctx.wake_due()
        elif verdict.applied:
            self._ctx.changes.fire()
        return verdict

    async def accept(self, session_id: int, runner: str, execution_id: int) -> Verdict:
        """Record that the runner started the execution. An open execution is always its
        job's current one (every move out of BUILDING finishes it first), so one fenced
        UPDATE decides; only a refusal reads further, to record it."""

        def act(conn: Connection, found: Reported, now: datetime) -> Verdict:
            store.mark_execution(conn, execution_id, "accepted_at", now)
            return Verdict(True, job_id=found.job.id)

        def work(conn: Connection) -> Verdict:
            now = self._ctx.clock.now()
            job_id = store.accept_open_execution(conn, execution_id, session_id, now)
            if job_id is not None:
                return Verdict(True, job_id=job_id)
            fenced = _fence(conn, session_id, execution_id, now, runner, "accept")
            return fenced if isinstance(fenced, Verdict) else act(conn, fenced, now)

        return await self._ctx.commits.submit(work)

    async def commit_point(self, session_id: int, runner: str, execution_id: int) -> Verdict:
        def act(conn: Connection, found: Reported, now: datetime) -> Verdict:
            job = found.job
            if store.mark_execution(conn, execution_id, "committed_at", now):
                event = event_row(
                    job.id,
                    "commit-point",
                    now,
                    actor=f"runner:{runner}",
                    cause="the irreversible step started",
                    execution_id=execution_id,
                )
                store.insert_events(conn, [event])
            return Verdict(True, job_id=job.id)

        return await self._fenced(session_id, runner, execution_id, "commit point", act)

    async def refuse(self, session_id: int, runner: str, execution_id: int, reason: str) -> Verdict:
        cause = f"refused by runner {runner}: {reason or 'no reason given'}"

        def act(conn: Connection, found: Reported, now: datetime) -> Verdict:
            job = found.job
            store.finish_execution(conn, execution_id, Outcome.LOST, now, info=cause)
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
            store.finish_execution(conn, execution_id, Outcome.CANCELLED, now, info=cause)
            apply(conn, job, CONFIRM_CANCEL, now, actor=f"runner:{runner}", cause=cause)
            return Verdict(True, job_id=job.id, new_state=JobState.CANCELLED)

        return await self._fenced(session_id, runner, execution_id, "cancel-ack", act)

    async def heartbeat(
        self,
        session_id: int,
        progress: Sequence[tuple[int, str | None, int | None]],
    ) -> None:
        def work(conn: Connection) -> None:
            now = self._ctx.clock.now()
            runner_store.touch_session(conn, session_id, now)
            store.touch_executions(conn, session_id, progress, now)

        await self._ctx.commits.submit(work)


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
    found = store.reported(conn, execution_id)
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
