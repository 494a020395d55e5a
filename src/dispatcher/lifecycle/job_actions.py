"""What an operator does to one job besides cancelling it (SPEC §8): retry a job that
ended badly as a new job, run a waiting job now, delete a pending job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dispatcher.domain.errors import Conflict, InvalidInput, NotFound
from dispatcher.domain.model import Job
from dispatcher.domain.states import DELETE, JobState
from dispatcher.lifecycle.admission import Admission
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.transitions import apply, event_row
from dispatcher.store import events as event_store
from dispatcher.store import jobs as store

T = TypeVar("T")

# SPEC §4: FAILED means "a new submission may work"; the others an operator may still
# want to run again. SUCCEEDED is done: a new job is a new submission.
RETRYABLE = frozenset(
    {JobState.FAILED, JobState.CANCELLED, JobState.IRRECOVERABLE, JobState.NOT_FOR_US}
)


class JobActions:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._admission = Admission(ctx.rules, ctx.rng, ctx.known_flavors)

    async def retry(self, job_id: int, *, actor: str, reason: str) -> tuple[Job, int]:
        """Admit a new job with the spec of ``job_id``, which keeps its terminal state.
        Returns the new job and the original's id."""
        cause = reason or f"retried by {actor}"

        def work(conn: Connection) -> Job:
            now = self._ctx.clock.now()
            job = _find(conn, job_id)
            if job.state not in RETRYABLE:
                hint = (
                    "it succeeded; submit a new job to run it again"
                    if job.state is JobState.SUCCEEDED
                    else "it has not ended; cancel it first, or wait"
                )
                raise Conflict(
                    f"job {job_id} is {job.state.value}: only FAILED, CANCELLED, "
                    f"IRRECOVERABLE or NOT_FOR_US jobs can be retried ({hint})"
                )
            # A new request by an operator: no replay of the original's idempotency key,
            # due time or origin time. Everything else is the original's.
            spec = replace(job.spec, idempotency_key="", not_before=None, origin_time=None)
            [new] = self._admission.admit(conn, [spec], now, actor=actor)
            event_store.insert_events(
                conn,
                [
                    event_row(
                        new.id,
                        "retry-of",
                        now,
                        actor=actor,
                        cause=f"retry of job {job_id} ({job.state.value}): {cause}",
                    ),
                    event_row(
                        job_id,
                        "retried",
                        now,
                        actor=actor,
                        cause=f"retried as job {new.id}: {cause}",
                    ),
                ],
            )
            return _find(conn, new.id)

        new = await self._run(work)
        self._ctx.wake()
        return new, job_id

    async def run_now(self, job_id: int, *, actor: str) -> Job:
        """Make a NOTICED job that waits for its due time due now."""

        def work(conn: Connection) -> Job:
            now = self._ctx.clock.now()
            job = _find(conn, job_id)
            if job.state is not JobState.NOTICED:
                raise Conflict(
                    f"job {job_id} is {job.state.value}: only a NOTICED job waits for its due time"
                )
            due = job.spec.not_before
            if due is None or due <= now or not store.make_due(conn, job_id, now):
                raise Conflict(
                    f"job {job_id} is due already and waits for something else; "
                    f"`dispatcher jobs explain {job_id}` (ExplainJob) says what"
                )
            event_store.insert_events(
                conn,
                [
                    event_row(
                        job_id,
                        "run-now",
                        now,
                        actor=actor,
                        cause=f"made due now by {actor} (was due {due.isoformat()})",
                    )
                ],
            )
            return _find(conn, job_id)

        job = await self._run(work)
        self._ctx.wake_due()
        return job

    async def delete(self, job_id: int, *, actor: str, reason: str) -> Job:
        """Take a pending job that never started out of the queue (CANCELLED, "deleted")."""
        cause = reason or f"deleted by {actor}"

        def work(conn: Connection) -> Job:
            now = self._ctx.clock.now()
            job = _find(conn, job_id)
            if job.state not in DELETE.sources:
                raise Conflict(
                    f"job {job_id} is {job.state.value}: only a pending job (NOTICED or QUEUED) "
                    "that never started can be deleted; use cancel for a building one"
                )
            if job.attempt > 0:
                raise Conflict(
                    f"job {job_id} has started before (attempt {job.attempt}), so its history "
                    "matters: cancel it instead"
                )
            if not apply(conn, job, DELETE, now, actor=actor, cause=cause):
                raise Conflict(f"job {job_id} changed meanwhile; look at it and try again")
            return _find(conn, job_id)

        job = await self._run(work)
        # A job waiting behind it on a dedupe key may run now.
        self._ctx.wake_due()
        return job

    async def _run(self, work: Callable[[Connection], T]) -> T:
        try:
            return await self._ctx.db.run(work)
        except IntegrityError:
            # A job with the same dedupe key became runnable between admission's lookup
            # and its insert; the unique index refused ours. Now the lookup sees it.
            return await self._ctx.db.run(work)


def _find(conn: Connection, job_id: int) -> Job:
    if job_id <= 0:
        raise InvalidInput("id is required: a positive job id")
    job = store.get_job(conn, job_id, for_update=True)
    if job is None:
        raise NotFound(f"job {job_id} does not exist")
    return job
