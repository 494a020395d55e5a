"""The one place a job's state is written: a fenced move plus its event, in the
caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from dispatcher.domain.model import Job
from dispatcher.domain.states import (
    CONFIRM_CANCEL,
    JobState,
    Outcome,
    Transition,
    lost_transition,
)
from dispatcher.store import jobs as store


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
) -> bool:
    """Move ``job`` by ``transition`` if it is still in a source state (and, for moves that
    end an execution, still bound to the execution it was read with). Writes the event in
    the same transaction. Returns False, writing nothing, when the job moved meanwhile."""
    execution_id = new_execution_id or job.current_execution_id
    moved = store.move(
        conn,
        job.id,
        transition,
        now,
        info=info if info is not None else cause,
        expected_execution_id=job.current_execution_id,
        new_execution_id=new_execution_id,
    )
    if moved:
        store.insert_events(
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
    return moved


def refuse_stale(
    conn: Connection, job_id: int, execution_id: int, now: datetime, *, actor: str, what: str
) -> str:
    """Record that a message about a non-current execution was refused; returns the reason."""
    reason = (
        f"execution {execution_id} is not the current execution of job {job_id}; {what} refused"
    )
    store.insert_events(
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
    conn: Connection, execution_id: int, job_id: int, now: datetime, *, actor: str, cause: str
) -> JobState | None:
    """An execution's stream or replica is gone: finish it as LOST and move its job by
    the job's on-lost policy (a job with a pending cancel is simply CANCELLED).
    Returns the job's new state, or None when the execution no longer spoke for the job."""
    execution = store.get_execution(conn, execution_id)
    store.finish_execution(conn, execution_id, Outcome.LOST, now, info=cause)
    job = store.get_job(conn, job_id, for_update=True)
    if (
        job is None
        or job.state is not JobState.BUILDING
        or job.current_execution_id != execution_id
    ):
        return None
    if job.cancel_requested:
        transition = CONFIRM_CANCEL
        cause = f"cancelled; {cause}"
    else:
        committed = execution is not None and execution.committed_at is not None
        transition = lost_transition(job.spec.on_lost, committed)
        if committed and transition.target is JobState.IRRECOVERABLE:
            cause = f"{cause} after its commit point"
    apply(conn, job, transition, now, actor=actor, cause=cause)
    return transition.target
