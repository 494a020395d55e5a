"""Job use cases for submitters and operators: submit, get, list, cancel; and the
scheduler's own moves: claim for runner sessions, queue jobs that became due."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dispatcher.domain.errors import InvalidInput, LimitExceeded, NotFound
from dispatcher.domain.model import Assignment, Job, JobEvent, JobFilter, JobSpec, Page
from dispatcher.domain.states import CANCEL_WAITING, EXPIRE, QUEUE, JobState
from dispatcher.domain.validation import check_spec
from dispatcher.lifecycle.admission import Admission
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.transitions import apply, apply_claims, event_row
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
        self._admission = Admission(ctx.rules, ctx.rng)

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
            # Another submission with the same idempotency key, or a runnable job with
            # the same dedupe key, committed between our lookup and our insert; the
            # unique index refused ours. Now the lookup finds it.
            result = await self._ctx.db.run(lambda conn: self._submit(conn, specs, actor))
        if any(created for _, created in result):
            self._ctx.wake()
        return result

    def _submit(
        self, conn: Connection, specs: Sequence[JobSpec], actor: str
    ) -> list[tuple[Job, bool]]:
        now = self._ctx.clock.now()
        existing: dict[int, int] = {}  # index -> job id
        seen_keys: dict[str, int] = {}  # idempotency key -> first index in this batch
        fresh: list[tuple[int, JobSpec]] = []
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
            fresh.append((index, spec))
        admitted = self._admission.admit(conn, [spec for _, spec in fresh], now, actor=actor)
        created = {index: job.id for (index, _), job in zip(fresh, admitted, strict=True)}
        by_id = {job.id: job for job in admitted}
        by_id.update(store.get_jobs(conn, existing.values()))
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

    async def history(self, job_id: int) -> list[JobEvent]:
        """Every event of a job, oldest first (SPEC §8 history)."""
        if job_id <= 0:
            raise InvalidInput("id is required: a positive job id")

        def read(conn: Connection) -> list[JobEvent]:
            if store.get_job(conn, job_id) is None:
                raise NotFound(f"job {job_id} does not exist")
            return store.events_of(conn, job_id)

        return await self._ctx.db.run(read)

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
        assignments = await self._ctx.db.run(lambda conn: self._claim(conn, demands))
        if assignments:
            self._ctx.changes.fire()  # watchers (WatchJobs, pressure) read the moves now
        return assignments

    def _claim(self, conn: Connection, demands: Sequence[Demand]) -> list[Assignment]:
        now = self._ctx.clock.now()
        # A session closed meanwhile (by this or another replica) must not get work.
        open_sessions = runner_store.lock_open_sessions(conn, [d.session_id for d in demands])
        quarantined = runner_store.quarantined_runners(conn, [d.runner for d in demands], now)
        # Runners that match the same jobs share one read of the queue: the head of the
        # order, as many jobs as they have free slots together, dealt out in turn.
        groups: dict[tuple[str, frozenset[str]], list[Demand]] = {}
        for demand in demands:
            if demand.session_id in open_sessions and demand.runner not in quarantined:
                groups.setdefault((demand.platform, demand.labels), []).append(demand)
        assignments: list[Assignment] = []
        for (platform, labels), group in groups.items():
            wanted = sum(d.slots for d in group)
            candidates = store.claimable_jobs(conn, platform, labels, wanted)
            # Two candidates may share a coalesce key; the first one holds it.
            picked = iter(
                job
                for job in candidates
                if store.acquire_coalesce_holds(conn, job.id, job.spec.coalesce_keys)
            )
            for demand in group:
                share = [job for _, job in zip(range(demand.slots), picked, strict=False)]
                execution_ids = apply_claims(conn, share, demand.runner, demand.session_id, now)
                assignments.extend(
                    Assignment(
                        demand.session_id, execution_id, _claimed(job, execution_id, demand, now)
                    )
                    for job, execution_id in zip(share, execution_ids, strict=True)
                )
        return assignments

    async def queue_due(self, limit: int = 1000) -> int:
        """Move NOTICED jobs that became ready (due, back-off over, dedupe original gone,
        a flavor serves them) to QUEUED, and fail waiting jobs past their max_wait.
        Returns how many moved."""

        def work(conn: Connection) -> int:
            now = self._ctx.clock.now()
            moved = 0
            for job in store.expired_waiting_jobs(conn, now, limit):
                wait = job.spec.max_wait.total_seconds() if job.spec.max_wait else 0
                cause = f"expired: not started within its max_wait of {wait:g} s"
                moved += apply(conn, job, EXPIRE, now, actor="dispatcher", cause=cause)
            promoted_keys: set[str] = set()
            for job in store.ready_noticed_jobs(conn, now, limit):
                key = job.spec.dedupe_key
                if key and key in promoted_keys:
                    continue  # one job per dedupe key may be runnable at a time
                promoted_keys.add(key)
                moved += apply(conn, job, QUEUE, now, actor="dispatcher", cause="ready", info="")
            return moved

        try:
            moved = await self._ctx.db.run(work)
        except IntegrityError:
            # Another replica queued a job with the same dedupe key first; the unique
            # index refused ours, and the next pass sees theirs.
            return 0
        if moved:
            self._ctx.wake()
        return moved

    async def expire_finished(self, limit: int = 1000) -> int:
        """Delete terminal jobs older than the retention (never below the replay
        window's max age, so a replay cannot slip past a forgotten idempotency key)."""

        def work(conn: Connection) -> int:
            cutoff = self._ctx.clock.now() - self._ctx.rules.retention
            return store.delete_finished_before(conn, cutoff, limit)

        return await self._ctx.db.run(work)


def _claimed(job: Job, execution_id: int, demand: Demand, now: datetime) -> Job:
    """The job as the claim left it, without reading it back."""
    return replace(
        job,
        state=JobState.BUILDING,
        attempt=job.attempt + 1,
        current_execution_id=execution_id,
        runner=demand.runner,
        info="",
        updated_at=now,
    )


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
