"""Job use cases for submitters and operators: submit, get, list, cancel; and the
scheduler's own moves: claim for runner sessions, queue jobs that became due."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dispatcher.domain.errors import InvalidInput, LimitExceeded, NotFound
from dispatcher.domain.model import Assignment, Job, JobFilter, JobSpec, Page
from dispatcher.domain.states import (
    CANCEL_WAITING,
    CLAIM,
    QUEUE,
    SUBMIT_NOTICED,
    SUBMIT_QUEUED,
    JobState,
)
from dispatcher.domain.validation import check_spec
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.transitions import apply, event_row
from dispatcher.store import jobs as store
from dispatcher.store import runners as runner_store

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 100


@dataclass(frozen=True)
class Demand:
    """A runner session with free slots, asking for up to ``slots`` jobs."""

    session_id: int
    runner: str
    platform: str
    labels: frozenset[str]
    slots: int


@dataclass(frozen=True)
class CancelOrder:
    """Tell the runner holding ``execution_id`` (on session ``session_id``) to stop it."""

    session_id: int
    execution_id: int
    reason: str


class Jobs:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    # --- submitters ---------------------------------------------------------------

    async def submit(self, specs: Sequence[JobSpec], *, actor: str) -> list[tuple[Job, bool]]:
        """Accept jobs (all or none). Returns each job and whether it was created (False
        when its idempotency key named an earlier job, which is returned instead)."""
        limits = self._ctx.limits
        if len(specs) > limits.max_batch_size:
            raise LimitExceeded(
                f"{len(specs)} jobs in one batch; the limit is {limits.max_batch_size}"
            )
        if not specs:
            raise InvalidInput("no jobs given: specs must not be empty")
        for index, spec in enumerate(specs):
            try:
                check_spec(spec, limits)
            except (InvalidInput, LimitExceeded) as exc:
                prefix = f"job {index}: " if len(specs) > 1 else ""
                raise type(exc)(f"{prefix}{exc}") from None
        try:
            result = await self._ctx.db.run(lambda conn: self._submit(conn, specs, actor))
        except IntegrityError:
            # Another submission with the same idempotency key committed between our
            # lookup and our insert; now the lookup finds it.
            result = await self._ctx.db.run(lambda conn: self._submit(conn, specs, actor))
        if any(created and job.state is JobState.QUEUED for job, created in result):
            self._ctx.wake()
        return result

    def _submit(
        self, conn: Connection, specs: Sequence[JobSpec], actor: str
    ) -> list[tuple[Job, bool]]:
        now = self._ctx.clock.now()
        existing: dict[int, int] = {}  # index -> job id
        seen_keys: dict[str, int] = {}  # idempotency key -> first index in this batch
        fresh: list[tuple[int, JobSpec, JobState]] = []
        for index, spec in enumerate(specs):
            key = spec.idempotency_key
            if key:
                if key in seen_keys:
                    continue
                seen_keys[key] = index
                found = store.job_id_by_idempotency_key(conn, key)
                if found is not None:
                    existing[index] = found
                    continue
            due = spec.not_before is None or spec.not_before <= now
            fresh.append((index, spec, JobState.QUEUED if due else JobState.NOTICED))
        ids = store.insert_jobs(conn, [(spec, state) for _, spec, state in fresh], now)
        events = []
        created: dict[int, int] = {}
        for job_id, (index, _, state) in zip(ids, fresh, strict=True):
            created[index] = job_id
            transition = SUBMIT_QUEUED if state is JobState.QUEUED else SUBMIT_NOTICED
            cause = "" if state is JobState.QUEUED else "not due yet"
            events.append(
                event_row(job_id, transition.event, now, actor=actor, cause=cause, to_state=state)
            )
        store.insert_events(conn, events)
        by_id = store.get_jobs(conn, [*created.values(), *existing.values()])
        out: list[tuple[Job, bool]] = []
        for index, spec in enumerate(specs):
            if index in created:
                out.append((by_id[created[index]], True))
            elif index in existing:
                out.append((by_id[existing[index]], False))
            else:  # a repeat of an idempotency key earlier in this batch
                first = seen_keys[spec.idempotency_key]
                job_id = created.get(first) or existing[first]
                out.append((by_id[job_id], False))
        return out

    async def get(self, job_id: int) -> Job:
        if job_id <= 0:
            raise InvalidInput("id is required: a positive job id")

        def read(conn: Connection) -> Job:
            job = store.get_job(conn, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            return replace(
                job,
                executions=tuple(store.executions_of(conn, job_id)),
                events=tuple(store.events_of(conn, job_id)),
            )

        return await self._ctx.db.run(read)

    async def page(self, flt: JobFilter, *, page_size: int, page_token: str) -> Page:
        if page_size == 0:
            page_size = DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidInput(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}")
        before = _decode_page_token(page_token) if page_token else None
        rows = await self._ctx.db.run(
            lambda conn: store.list_jobs(conn, flt, before_id=before, limit=page_size + 1)
        )
        more = len(rows) > page_size
        rows = rows[:page_size]
        return Page(jobs=tuple(rows), next_after_id=rows[-1].id if more else None)

    async def cancel(
        self, job_id: int, *, actor: str, reason: str
    ) -> tuple[Job, CancelOrder | None]:
        """Cancel a waiting job at once; ask the runner of a BUILDING one to stop."""
        if job_id <= 0:
            raise InvalidInput("id is required: a positive job id")
        cause = reason or f"cancelled by {actor}"

        def work(conn: Connection) -> tuple[Job, CancelOrder | None]:
            now = self._ctx.clock.now()
            job = store.get_job(conn, job_id, for_update=True)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            order = None
            if job.state in CANCEL_WAITING.sources:
                apply(conn, job, CANCEL_WAITING, now, actor=actor, cause=cause)
            elif job.state is JobState.BUILDING and job.current_execution_id is not None:
                execution_id = job.current_execution_id
                if store.mark_cancel_requested(conn, job.id, execution_id, now):
                    store.insert_events(
                        conn,
                        [
                            event_row(
                                job.id,
                                "cancel-requested",
                                now,
                                actor=actor,
                                cause=cause,
                                execution_id=execution_id,
                            )
                        ],
                    )
                execution = store.get_execution(conn, execution_id)
                if execution is not None and execution.session_id is not None:
                    order = CancelOrder(execution.session_id, execution_id, cause)
            fresh = store.get_job(conn, job_id)
            assert fresh is not None  # we hold its row
            return fresh, order

        return await self._ctx.db.run(work)

    # --- the scheduler ------------------------------------------------------------

    async def claim(self, demands: Sequence[Demand]) -> list[Assignment]:
        """Bind waiting jobs to runner sessions with free slots, all in one transaction:
        each claimed job moves QUEUED -> BUILDING with a new execution and an event."""
        return await self._ctx.db.run(lambda conn: self._claim(conn, demands))

    def _claim(self, conn: Connection, demands: Sequence[Demand]) -> list[Assignment]:
        now = self._ctx.clock.now()
        bound: list[tuple[int, int]] = []  # (session id, job id)
        # A session closed meanwhile (by this or another replica) must not get work.
        open_sessions = runner_store.lock_open_sessions(conn, [d.session_id for d in demands])
        for demand in demands:
            if demand.session_id not in open_sessions:
                continue
            candidates = store.claimable_jobs(
                conn, demand.platform, demand.labels, demand.slots, now
            )
            for job in candidates:
                execution_id = store.insert_execution(
                    conn, job.id, job.attempt + 1, demand.runner, demand.session_id, now
                )
                if not apply(
                    conn,
                    job,
                    CLAIM,
                    now,
                    actor=f"runner:{demand.runner}",
                    info="",
                    new_execution_id=execution_id,
                ):
                    raise RuntimeError(f"job {job.id} changed under a claim lock")
                bound.append((demand.session_id, job.id))
        if not bound:
            return []
        jobs = store.get_jobs(conn, [job_id for _, job_id in bound])
        return [
            Assignment(session_id, _required(jobs[job_id].current_execution_id), jobs[job_id])
            for session_id, job_id in bound
        ]

    async def queue_due(self, limit: int = 1000) -> int:
        """Move NOTICED jobs whose time has come to QUEUED. Returns how many moved."""

        def work(conn: Connection) -> int:
            now = self._ctx.clock.now()
            ids = store.due_noticed_job_ids(conn, now, limit)
            moved = 0
            for job in store.get_jobs(conn, ids).values():
                moved += apply(conn, job, QUEUE, now, actor="dispatcher", cause="due", info="")
            return moved

        moved = await self._ctx.db.run(work)
        if moved:
            self._ctx.wake()
        return moved


def _required(value: int | None) -> int:
    if value is None:
        raise RuntimeError("a claimed job has no execution")
    return value


def encode_page_token(after_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": after_id}).encode()).decode()


def _decode_page_token(token: str) -> int:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))["before"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        value = None
    if not isinstance(value, int) or value <= 0:
        raise InvalidInput("page_token is not one this server issued; start without it")
    return value
