"""Distributor executions (SPEC §7): the database side of handing jobs to distributor
instances, and of what their backends report. Adapters are never called here (the
distributors package does, outside any transaction); these use cases take what an
adapter said as plain values and move jobs only through ``transitions.apply``.

Every report is fenced like a runner's: it applies only to an open execution that is
still its job's current one; anything else is refused and recorded in the job's history.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from dispatcher.domain.distribution import BackendHealth, DistributorExecution
from dispatcher.domain.model import Job, Verdict
from dispatcher.domain.states import (
    CLAIM,
    CONFIRM_CANCEL,
    OUTCOME_TRANSITIONS,
    REFUSE,
    REJECT,
    JobState,
    Outcome,
)
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.executions import back_off, fail_or_retry
from dispatcher.lifecycle.transitions import apply, event_row, lose_execution, refuse_stale
from dispatcher.store import distributions as store
from dispatcher.store import events as event_store
from dispatcher.store import executions as execution_store
from dispatcher.store import jobs as job_store


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_notify_token() -> str:
    # 256 random bits, like every other secret of the dispatcher (SPEC §11).
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Claimed:
    """A job just bound to a new execution of a distributor instance."""

    job: Job
    execution_id: int
    number: int
    notify_token: str


@dataclass(frozen=True)
class Report:
    """What a backend said about an execution, in the dispatcher's terms."""

    outcome: Outcome | None
    info: str = ""
    result: bytes = b""
    raw: Mapping[str, Any] | None = None


class Notification(Exception):
    """Why a notification was refused: ``kind`` is NOT_FOUND, FORGED or STALE. Raised
    after the refusal was recorded (the transaction that records it has committed)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


class Distributions:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    # --- handing jobs out ---------------------------------------------------------

    async def claim(
        self,
        name: str,
        config: Mapping[str, Any],
        parallelism: int,
        make_token: Callable[[int], str | None],
    ) -> list[Claimed]:
        """Bind up to the instance's free parallelism of its QUEUED jobs to new
        executions, in one transaction: each moves QUEUED -> BUILDING with its execution,
        the config snapshot and the hash of its notification token."""

        def work(conn: Connection) -> list[Claimed]:
            now = self._ctx.clock.now()
            free = parallelism - store.open_count(conn, name)
            if free <= 0:
                return []
            claimed = []
            for job in store.claimable_jobs(conn, name, free, now):
                if not job_store.acquire_coalesce_holds(conn, job.id, job.spec.coalesce_keys):
                    continue
                deadline = now + job.spec.max_run if job.spec.max_run else None
                number = job.attempt + 1
                # The hash is written before the token is known so that the adapter
                # can derive the token from the execution id; it is replaced below.
                execution_id = store.insert_execution(
                    conn, job.id, number, name, config, "", now, deadline
                )
                token = make_token(execution_id) or new_notify_token()
                store.set_token_hash(conn, execution_id, hash_token(token))
                if not apply(
                    conn,
                    job,
                    CLAIM,
                    now,
                    actor=f"distributor:{name}",
                    info="",
                    new_execution_id=execution_id,
                ):
                    raise RuntimeError(f"job {job.id} changed under a claim lock")
                claimed.append(Claimed(job, execution_id, number, token))
            return claimed

        claimed = await self._ctx.db.run(work)
        if claimed:
            self._ctx.wake_sweep()  # their max_run and cancel deadlines run from now
        return claimed

    async def record_run(
        self, execution_id: int, backend_token: str, info_url: str, poll_timeout: timedelta
    ) -> bool:
        """run() returned: remember the backend's token and when to poll first."""

        def work(conn: Connection) -> bool:
            now = self._ctx.clock.now()
            at = now + poll_timeout
            if not store.record_run(conn, execution_id, backend_token, info_url, at):
                return False
            execution = store.get_execution(conn, execution_id)
            if execution is not None:
                cause = f"the backend runs it as {backend_token} {info_url}".strip()
                store_event(conn, execution, "handed-over", cause, now)
            return True

        return await self._ctx.db.run(work)

    async def give_back(self, execution_id: int, cause: str, *, permanent: bool) -> Verdict:
        """run() failed. Permanently: the job is NOT_FOR_US (this backend will never run
        it). Transiently, retries spent: the job goes back to QUEUED to wait for the
        backend, counting against neither its failures nor its losses."""
        transition = REJECT if permanent else REFUSE

        def work(conn: Connection, job: Job, execution: DistributorExecution) -> Verdict:
            now = self._ctx.clock.now()
            execution_store.finish_execution(conn, execution_id, Outcome.LOST, now, info=cause)
            store.mark_released(conn, execution_id, now)
            actor = f"distributor:{execution.distributor}"
            apply(conn, job, transition, now, actor=actor, cause=cause)
            return Verdict(True, job_id=job.id, new_state=transition.target)

        verdict = await self._fenced(execution_id, "run failure", work)
        if verdict.applied and not permanent:
            self._ctx.wake()
        return verdict

    # --- what backends report -----------------------------------------------------

    async def verify(self, execution_id: int, token: str) -> DistributorExecution:
        """The execution a notification names, when ``token`` is its token and it is still
        its job's current, open execution. Otherwise the refusal is recorded in the
        job's history and Notification is raised."""

        def work(conn: Connection) -> DistributorExecution | Notification:
            execution = store.get_execution(conn, execution_id)
            if execution is None:
                return Notification(
                    "NOT_FOUND", f"distributor execution {execution_id} does not exist"
                )
            now = self._ctx.clock.now()
            # Constant time: how long a wrong guess takes says nothing about the token.
            if not execution.token_hash or not hmac.compare_digest(
                hash_token(token), execution.token_hash
            ):
                reason = f"notification for execution {execution_id} with a wrong token refused"
                store_event(conn, execution, "forged-notification", reason, now)
                return Notification("FORGED", reason)
            job = job_store.get_job(conn, execution.job_id)
            if not _current(job, execution):
                reason = refuse_stale(
                    conn,
                    execution.job_id,
                    execution_id,
                    now,
                    actor=f"distributor:{execution.distributor}",
                    what="notification",
                )
                return Notification("STALE", reason)
            return execution

        found = await self._ctx.db.run(work)
        if isinstance(found, Notification):
            raise found
        return found

    async def report(
        self, execution_id: int, report: Report, *, poll_interval: timedelta, what: str
    ) -> Verdict:
        """Apply a backend's status (from a notification or a poll) to the execution and
        its job. Still running: its raw data is merged and the next poll is pushed back."""

        def work(conn: Connection, job: Job, execution: DistributorExecution) -> Verdict:
            now = self._ctx.clock.now()
            actor = f"distributor:{execution.distributor}"
            if report.raw:
                store.merge_raw(conn, job.id, report.raw, now)
            if report.outcome is None:
                store.touch(conn, execution_id, now)
                store.set_poll(conn, execution_id, now + poll_interval, 0)
                if execution_store.mark_execution(conn, execution_id, "accepted_at", now):
                    cause = report.info or "the backend started it"
                    event = event_row(
                        job.id,
                        "backend-started",
                        now,
                        actor=actor,
                        cause=cause,
                        execution_id=execution_id,
                    )
                    event_store.insert_events(conn, [event])
                return Verdict(True, job_id=job.id, new_state=JobState.BUILDING)
            store.mark_released(conn, execution_id, now)
            if report.outcome is Outcome.LOST:
                state = lose_execution(
                    conn,
                    execution_id,
                    job.id,
                    now,
                    actor=actor,
                    cause=report.info or "lost",
                    rules=self._ctx.rules,
                )
                return Verdict(state is not None, job_id=job.id, new_state=state)
            execution_store.finish_execution(
                conn, execution_id, report.outcome, now, info=report.info, result=report.result
            )
            if report.outcome is Outcome.FAILED:
                transition = fail_or_retry(conn, job, report.info, now, actor)
                if job.spec.failure_backoff is not None and job.spec.subject:
                    until = now + job.spec.failure_backoff
                    back_off(conn, job, until, report.info, now, actor)
            elif report.outcome is Outcome.CANCELLED:
                transition = CONFIRM_CANCEL
                apply(conn, job, transition, now, actor=actor, cause=report.info or "cancelled")
            else:
                transition = OUTCOME_TRANSITIONS[report.outcome]
                apply(conn, job, transition, now, actor=actor, cause=report.info)
            return Verdict(True, job_id=job.id, new_state=transition.target)

        verdict = await self._fenced(execution_id, what, work)
        if verdict.applied and verdict.new_state in (JobState.QUEUED, JobState.NOTICED):
            self._ctx.wake_due()
            self._ctx.wake()
        elif verdict.applied and verdict.new_state is not JobState.BUILDING:
            # A job ended: waiting jobs on its dedupe key or schedule may be ready. The
            # instance's own loop fills the freed slot (it asked, or it is woken).
            self._ctx.wake_due()
        return verdict

    async def missing(self, execution_id: int, cause: str) -> Verdict:
        """The backend no longer knows the task: the job follows its on-lost policy."""
        return await self.report(
            execution_id, Report(Outcome.LOST, cause), poll_interval=timedelta(0), what="loss"
        )

    async def confirm_cancel(self, execution_id: int, cause: str) -> Verdict:
        """The backend was told to stop a job an operator cancelled: it is CANCELLED."""
        return await self.report(
            execution_id,
            Report(Outcome.CANCELLED, cause),
            poll_interval=timedelta(0),
            what="cancel",
        )

    async def poll_later(self, execution_id: int, at: datetime, failures: int) -> None:
        await self._ctx.db.run(lambda conn: store.set_poll(conn, execution_id, at, failures))

    async def _fenced(
        self,
        execution_id: int,
        what: str,
        act: Callable[[Connection, Job, DistributorExecution], Verdict],
    ) -> Verdict:
        def work(conn: Connection) -> Verdict:
            execution = store.get_execution(conn, execution_id)
            if execution is None:
                return Verdict(False, f"distributor execution {execution_id} does not exist")
            job = job_store.get_job(conn, execution.job_id, for_update=True)
            if job is None or not _current(job, execution):
                reason = refuse_stale(
                    conn,
                    execution.job_id,
                    execution_id,
                    self._ctx.clock.now(),
                    actor=f"distributor:{execution.distributor}",
                    what=what,
                )
                return Verdict(False, reason, job_id=execution.job_id)
            return act(conn, job, execution)

        return await self._ctx.db.run(work)

    # --- what the distributor loop reads --------------------------------------------

    async def due_polls(
        self, name: str, *, ahead: timedelta = timedelta(0), limit: int = 100
    ) -> list[DistributorExecution]:
        """Executions of ``name`` to poll now (or due within ``ahead``)."""
        return await self._ctx.db.run(
            lambda conn: store.due_polls(conn, name, self._ctx.clock.now() + ahead, limit)
        )

    async def next_poll_at(self, name: str) -> datetime | None:
        return await self._ctx.db.run(lambda conn: store.next_poll_at(conn, name))

    async def cancel_requested(self, name: str) -> list[DistributorExecution]:
        return await self._ctx.db.run(lambda conn: store.cancel_requested(conn, name))

    async def unreleased(self, name: str, limit: int = 100) -> list[DistributorExecution]:
        return await self._ctx.db.run(lambda conn: store.unreleased_finished(conn, name, limit))

    async def released(self, execution_id: int) -> None:
        await self._ctx.db.run(
            lambda conn: store.mark_released(conn, execution_id, self._ctx.clock.now())
        )

    async def unstarted(self, name: str, older_than: timedelta) -> list[DistributorExecution]:
        def read(conn: Connection) -> list[DistributorExecution]:
            return store.unstarted_before(conn, name, self._ctx.clock.now() - older_than)

        return await self._ctx.db.run(read)

    async def raw(self, job_id: int) -> dict[str, Any]:
        return await self._ctx.db.run(lambda conn: store.raw_of(conn, job_id))

    # --- backend health -----------------------------------------------------------

    async def health(self) -> dict[str, BackendHealth]:
        return await self._ctx.db.run(store.all_health)

    async def mark_down(
        self, name: str, cause: str, *, initial: timedelta, longest: timedelta
    ) -> BackendHealth:
        """A call to the backend failed: it is down (its jobs wait); probe it after a
        while that doubles with each failed probe, up to ``longest``."""

        def work(conn: Connection) -> BackendHealth:
            now = self._ctx.clock.now()
            was = store.get_health(conn, name)
            interval = min(was.probe_interval * 2, longest) if not was.up else initial
            health = BackendHealth(
                name,
                up=False,
                down_since=was.down_since if not was.up else now,
                cause=cause,
                next_probe_at=now + interval,
                probe_interval=interval,
            )
            store.save_health(conn, health, now)
            return health

        return await self._ctx.db.run(work)

    async def mark_up(self, name: str) -> None:
        def work(conn: Connection) -> None:
            if not store.get_health(conn, name).up:
                store.save_health(conn, BackendHealth(name), self._ctx.clock.now())

        await self._ctx.db.run(work)
        self._ctx.wake()


def _current(job: Job | None, execution: DistributorExecution) -> bool:
    return (
        job is not None
        and job.state is JobState.BUILDING
        and job.current_execution_id == execution.id
        and execution.finished_at is None
    )


def store_event(
    conn: Connection, execution: DistributorExecution, kind: str, cause: str, now: datetime
) -> None:
    event = event_row(
        execution.job_id,
        kind,
        now,
        actor=f"distributor:{execution.distributor}",
        cause=cause,
        execution_id=execution.id,
    )
    event_store.insert_events(conn, [event])
