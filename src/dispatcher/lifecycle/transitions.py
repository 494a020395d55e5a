"""The one place a job's state is written: a fenced move plus its event, in the
caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection

from dispatcher.domain.model import Job, ScheduleState
from dispatcher.domain.rules import SchedulingRules, quarantine_for, schedule_next_due
from dispatcher.domain.states import (
    CLAIM,
    CONFIRM_CANCEL,
    DUPLICATE_OF_STATE,
    FAIL,
    RECLAIM,
    JobState,
    Outcome,
    Transition,
    lost_transition,
)
from dispatcher.lifecycle.messages import WAKE, announce
from dispatcher.store import events as event_store
from dispatcher.store import executions as execution_store
from dispatcher.store import jobs as store
from dispatcher.store import notify
from dispatcher.store import runners as runner_store
from dispatcher.store import schedules as schedule_store


def event_row(
    job_id: int,
    kind: str,
    now: datetime,
    *,
    actor: str,
    cause: str = "",
    execution_id: int | None = None,
    from_state: JobState | None = None,
    to_state: JobState | None = None,
) -> dict[str, object]:
    return {
        "job_id": job_id,
        "execution_id": execution_id,
        "kind": kind,
        "from_state": from_state.value if from_state else None,
        "to_state": to_state.value if to_state else None,
        "actor": actor,
        "cause": cause,
        "at": now,
    }


def apply(
    conn: Connection,
    job: Job,
    transition: Transition,
    now: datetime,
    *,
    actor: str,
    cause: str = "",
    info: str | None = None,
    new_execution_id: int | None = None,
    count: str | None = None,
    not_before: datetime | None = None,
    duplicate_of: int | None = None,
) -> bool:
    """Move ``job`` by ``transition`` if it is still in a source state (and, for moves that
    end an execution, still bound to the execution it was read with). Writes the event in
    the same transaction, and carries out what the move implies for other rows: coalesce
    keys are released when the job stops building; jobs waiting on its dedupe key and its
    schedule learn how it ended; every replica is woken when the move may make jobs
    claimable (one notification per transaction), and this replica's due loop when it
    may make waiting jobs ready or due at a new time (the job ended, or waits again).
    Returns False, writing nothing, when the job moved meanwhile."""
    execution_id = new_execution_id or job.current_execution_id
    moved = store.move(
        conn,
        job.id,
        transition,
        now,
        info=info if info is not None else cause,
        expected_execution_id=job.current_execution_id,
        new_execution_id=new_execution_id,
        count=count,
        not_before=not_before,
        duplicate_of=duplicate_of,
    )
    if moved:
        event_store.insert_events(
            conn,
            [
                event_row(
                    job.id,
                    transition.event,
                    now,
                    actor=actor,
                    cause=cause,
                    execution_id=execution_id,
                    from_state=job.state,
                    to_state=transition.target,
                )
            ],
        )
        leaves_building = (
            JobState.BUILDING in transition.sources and transition.target is not JobState.BUILDING
        )
        if leaves_building and job.spec.coalesce_keys:
            store.release_coalesce_holds(conn, job.id)
            announce(conn, WAKE)  # jobs waiting on its keys may run, on any replica
        if transition.target is JobState.QUEUED:
            announce(conn, WAKE)
        elif transition.target is not JobState.BUILDING:
            notify.due_here(conn)
        if transition.target.terminal and duplicate_of is None:
            _settle_dedupe(conn, job, transition.target, now)
            _settle_schedule(conn, job, transition.target, now)
    return moved


@dataclass(frozen=True)
class Claim:
    """A QUEUED job to bind to a runner session."""

    job: Job
    runner: str
    session_id: int


def apply_claims(conn: Connection, claims: Sequence[Claim], now: datetime) -> list[int]:
    """CLAIM QUEUED jobs for runner sessions: their executions, the moves and the
    events, a statement each for the whole batch. The caller holds the jobs' rows (read
    FOR UPDATE, or SQLite's single writer), so every compare-and-set applies. Returns
    the new execution ids, in the order of ``claims``."""
    if not claims:
        return []
    return store.claim_queued(
        conn,
        [
            store.NewExecution(
                job_id=c.job.id,
                number=c.job.attempt + 1,
                runner=c.runner,
                session_id=c.session_id,
                deadline_at=now + c.job.spec.max_run if c.job.spec.max_run else None,
                actor=f"runner:{c.runner}",
            )
            for c in claims
        ],
        now,
        event=CLAIM.event,
    )


def _settle_dedupe(conn: Connection, job: Job, ended: JobState, now: datetime) -> None:
    """SPEC §5.4: jobs waiting behind ``job`` on its dedupe key take its status when it
    ended well; otherwise the next of them may run (the due loop queues it)."""
    key = job.spec.dedupe_key
    if not key or ended not in DUPLICATE_OF_STATE:
        return
    _, follower_move = DUPLICATE_OF_STATE[ended]
    for follower in store.noticed_with_dedupe_key(conn, key):
        apply(
            conn,
            follower,
            follower_move,
            now,
            actor="dispatcher",
            cause=f"duplicate of job {job.id} ({ended.value}) with dedupe key {key!r}",
            duplicate_of=job.id,
        )


# Schedule runs that end so count as failures (stretching the interval).
_SCHEDULE_FAILURES = frozenset({JobState.FAILED, JobState.IRRECOVERABLE, JobState.NOT_FOR_US})


def _settle_schedule(conn: Connection, job: Job, ended: JobState, now: datetime) -> None:
    """A schedule's pending job ended: count it, and set when the next one is due. The
    schedule tick makes that job."""
    if not job.schedule:
        return
    found = schedule_store.get_schedule(conn, job.schedule, for_update=True)
    if found is None:
        return
    schedule_id, schedule = found
    execution = (
        execution_store.get_execution(conn, job.current_execution_id)
        if job.current_execution_id
        else None
    )
    started = execution.started_at if execution is not None else schedule.last_started_at
    failures = schedule.consecutive_failures
    if ended is JobState.SUCCEEDED:
        failures = 0
    elif ended in _SCHEDULE_FAILURES:
        failures += 1
    state = schedule.state
    if failures >= schedule.spec.max_failures and state is ScheduleState.ACTIVE:
        state = ScheduleState.SUSPENDED
        event_store.insert_events(
            conn,
            [
                event_row(
                    job.id,
                    "schedule-suspended",
                    now,
                    actor="dispatcher",
                    cause=f"schedule {job.schedule!r} suspended after {failures} failures in a row",
                )
            ],
        )
    next_due = schedule_next_due(started or now, schedule.spec.interval, failures)
    schedule_store.update_schedule(
        conn,
        schedule_id,
        state=state,
        consecutive_failures=failures,
        next_due_at=next_due,
        last_started_at=started,
    )


def refuse_stale(
    conn: Connection, job_id: int, execution_id: int, now: datetime, *, actor: str, what: str
) -> str:
    """Record that a message about a non-current execution was refused; returns the reason."""
    reason = (
        f"execution {execution_id} is not the current execution of job {job_id}; {what} refused"
    )
    event_store.insert_events(
        conn,
        [
            event_row(
                job_id,
                "stale-message",
                now,
                actor=actor,
                cause=reason,
                execution_id=execution_id,
            )
        ],
    )
    return reason


def lose_execution(
    conn: Connection,
    execution_id: int,
    job_id: int,
    now: datetime,
    *,
    actor: str,
    cause: str,
    rules: SchedulingRules,
) -> JobState | None:
    """An execution's stream or replica is gone: finish it as LOST and move its job by
    the job's on-lost policy (a job with a pending cancel is simply CANCELLED). The loss
    counts against the job's own loss limit, not its failure budget, and against its
    runner, which is quarantined when it keeps losing executions.
    Returns the job's new state, or None when the execution no longer spoke for the job."""
    execution = execution_store.get_execution(conn, execution_id)
    execution_store.finish_execution(conn, execution_id, Outcome.LOST, now, info=cause)
    job = store.get_job(conn, job_id, for_update=True)
    if (
        job is None
        or job.state is not JobState.BUILDING
        or job.current_execution_id != execution_id
    ):
        return None
    count = None
    if job.cancel_requested:
        transition = CONFIRM_CANCEL
        cause = f"cancelled; {cause}"
    else:
        committed = execution is not None and execution.committed_at is not None
        transition = lost_transition(job.spec.on_lost, committed)
        if committed and transition.target is JobState.IRRECOVERABLE:
            cause = f"{cause} after its commit point"
        count = "losses"
        if transition is RECLAIM and job.losses + 1 > job.spec.retry.max_lost:
            transition = FAIL
            cause = (
                f"{cause}; lost {job.losses + 1} times, more than the limit of "
                f"{job.spec.retry.max_lost}"
            )
        if execution is not None and execution.runner:
            count_runner_loss(conn, execution.runner, job.id, now, rules)
    apply(conn, job, transition, now, actor=actor, cause=cause, count=count)
    return transition.target


def count_runner_loss(
    conn: Connection, runner: str, job_id: int, now: datetime, rules: SchedulingRules
) -> None:
    """One more execution of ``runner`` lost or refused in a row; quarantine it (no work
    for a growing while) when that keeps happening. The verdict goes in the history of
    the job whose loss decided it."""
    lost_in_row, quarantines = runner_store.count_lost_execution(conn, runner)
    if lost_in_row < rules.quarantine_after:
        return
    until = now + quarantine_for(rules, quarantines)
    runner_store.quarantine(conn, runner, until)
    event_store.insert_events(
        conn,
        [
            event_row(
                job_id,
                "runner-quarantined",
                now,
                actor="dispatcher",
                cause=(
                    f"runner {runner} quarantined until {until.isoformat()}: "
                    f"{lost_in_row} executions lost or refused in a row"
                ),
            )
        ],
    )
