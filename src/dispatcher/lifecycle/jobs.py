"""Job use cases for submitters and operators: submit, get, list, cancel; and the
scheduler's own moves: claim for runner sessions, queue jobs that became due."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dispatcher.domain.errors import InvalidInput, LimitExceeded, NotFound
from dispatcher.domain.model import Assignment, Job, JobEvent, JobFilter, JobSpec, Page
from dispatcher.domain.states import CANCEL_WAITING, CLAIM, EXPIRE, QUEUE, JobState
from dispatcher.domain.validation import check_spec
from dispatcher.lifecycle.admission import Admission
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.messages import WAKE, CancelOrder, announce
from dispatcher.lifecycle.transitions import Claim, apply, apply_claims, event_row
from dispatcher.store import events as event_store
from dispatcher.store import executions as execution_store
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
    # The last claim for this kind of runner found the queue holding nothing it may
    # take, and no job arrived since: a submit may bind its own jobs to it without
    # reading the queue (nothing older waits for this runner).
    queue_dry: bool = False


# What a runner can take (SPEC §5.1): its platform and labels.
Kind = tuple[str, frozenset[str]]


class Handoff(Protocol):
    """The runner streams of this replica, for a submit that binds its jobs to idle
    runners in its own transaction instead of leaving them to the next claim."""

    def take_demands(self, jobs: Sequence[JobSpec] | None = None) -> list[Demand]:
        """The sessions with free slots, those slots reserved until ``deliver``; given
        ``jobs``, only sessions that may run one of them, and no more slots than jobs."""
        ...

    def deliver(self, demands: Sequence[Demand], assignments: Sequence[Assignment]) -> None:
        """Send what the claim bound, and free the reserved slots."""
        ...


class Jobs:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._admission = Admission(ctx.rules, ctx.rng, ctx.known_flavors)
        self._handoff: Handoff | None = None

    def hand_off_to(self, handoff: Handoff) -> None:
        """Submits bind runnable jobs to the idle runners of ``handoff`` at once: on an
        idle system a job reaches a runner one transaction after it was submitted."""
        self._handoff = handoff

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
        for_runners = [spec for spec in specs if not spec.distributor]
        demands = self._handoff.take_demands(for_runners) if self._handoff and for_runners else []
        assignments: list[Assignment] = []
        try:
            try:
                result, assignments = await self._ctx.db.run(
                    lambda conn: self._submit(conn, specs, actor, demands)
                )
            except IntegrityError:
                # Another submission with the same idempotency key, or a runnable job
                # with the same dedupe key, committed between our lookup and our insert;
                # the unique index refused ours. Now the lookup finds it. (Or the flavor
                # admission chose was deleted meanwhile: read the flavors again.)
                self._ctx.known_flavors.forget()
                result, assignments = await self._ctx.db.run(
                    lambda conn: self._submit(conn, specs, actor, demands)
                )
        finally:
            if self._handoff:
                self._handoff.deliver(demands, assignments)
        if any(created and job.state is not JobState.BUILDING for job, created in result):
            self._ctx.wake()  # what the hand-off left waits for the assigners
        elif any(created for _, created in result):
            self._ctx.changes.fire()  # every job bound already: only watchers need to know
        if assignments:
            # Let the runners' streams send their Assigns before this call's reply is
            # built and sent: the job starts a little sooner, the submitter hears a
            # little later.
            await asyncio.sleep(0)
        return result

    def _submit(
        self, conn: Connection, specs: Sequence[JobSpec], actor: str, demands: Sequence[Demand]
    ) -> tuple[list[tuple[Job, bool]], list[Assignment]]:
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
        assignments: list[Assignment] = []
        dry = bool(demands) and all(d.queue_dry for d in demands)
        if (
            dry
            and len(fresh) == 1
            and not fresh[0][1].coalesce_keys  # holds are taken before a bind
            and store.binds_at_insert(conn)
        ):
            admitted, assignments = self._admit_one_bound(conn, fresh[0][1], demands, actor, now)
        else:
            admitted = self._admission.admit(
                conn, [spec for _, spec in fresh], now, actor=actor, wake=False
            )
            if demands and any(job.state is JobState.QUEUED for job in admitted):
                if dry:
                    assignments = self._bind_fresh(conn, demands, admitted, now)
                else:
                    assignments = self._claim(conn, demands)
        bound = {a.job.id for a in assignments}
        if any(job.state is JobState.QUEUED and job.id not in bound for job in admitted):
            # Only what the hand-off left: a job already bound needs no other runner.
            announce(conn, WAKE)
        created = {index: job.id for (index, _), job in zip(fresh, admitted, strict=True)}
        by_id = {job.id: job for job in admitted}
        by_id.update((a.job.id, a.job) for a in assignments)  # what the claim made them
        if existing:
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
        return out, assignments

    async def history(self, job_id: int) -> list[JobEvent]:
        """Every event of a job, oldest first (SPEC §8 history)."""
        if job_id <= 0:
            raise InvalidInput("id is required: a positive job id")

        def read(conn: Connection) -> list[JobEvent]:
            if store.get_job(conn, job_id) is None:
                raise NotFound(f"job {job_id} does not exist")
            return event_store.events_of(conn, job_id)

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
                executions=tuple(execution_store.executions_of(conn, job_id)),
                events=tuple(event_store.events_of(conn, job_id)),
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
        """Cancel a waiting job at once; ask the runner of a BUILDING one to stop (the
        returned order, announced to every replica as well)."""
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
                    event_store.insert_events(
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
                execution = execution_store.get_execution(conn, execution_id)
                if execution is not None and execution.session_id is not None:
                    order = CancelOrder(execution.session_id, execution_id, cause)
                    # Its stream may live on another replica: that one tells the runner.
                    announce(conn, order)
            fresh = store.get_job(conn, job_id)
            assert fresh is not None  # we hold its row
            return fresh, order

        return await self._ctx.db.run(work)

    # --- the scheduler ------------------------------------------------------------

    async def claim(
        self, demands: Sequence[Demand], *, dry: set[Kind] | None = None
    ) -> list[Assignment]:
        """Bind waiting jobs to runner sessions with free slots, all in one transaction:
        each claimed job moves QUEUED -> BUILDING with a new execution and an event.
        ``dry`` gets the kinds of runner for which the queue held fewer jobs than slots."""
        assignments = await self._ctx.db.run(lambda conn: self._claim(conn, demands, dry))
        if assignments:
            self._ctx.changes.fire()  # watchers (WatchJobs, pressure) read the moves now
        return assignments

    def _claim(
        self, conn: Connection, demands: Sequence[Demand], dry: set[Kind] | None = None
    ) -> list[Assignment]:
        now = self._ctx.clock.now()
        # A session closed meanwhile (by this or another replica) must not get work, nor
        # a runner in quarantine.
        ready = runner_store.lock_sessions_to_claim_for(conn, [d.session_id for d in demands], now)
        # Runners that match the same jobs share one read of the queue: the head of the
        # order, as many jobs as they have free slots together, dealt out in turn.
        groups: dict[tuple[str, frozenset[str]], list[Demand]] = {}
        for demand in demands:
            if demand.session_id in ready:
                groups.setdefault((demand.platform, demand.labels), []).append(demand)
        assignments: list[Assignment] = []
        for (platform, labels), group in groups.items():
            wanted = sum(d.slots for d in group)
            candidates = store.claimable_jobs(conn, platform, labels, wanted)
            if dry is not None and len(candidates) < wanted:
                dry.add((platform, labels))
            # Two candidates may share a coalesce key; the first one holds it.
            picked = iter(
                job
                for job in candidates
                if store.acquire_coalesce_holds(conn, job.id, job.spec.coalesce_keys)
            )
            claims = [
                Claim(job, demand.runner, demand.session_id)
                for demand in group
                for _, job in zip(range(demand.slots), picked, strict=False)
            ]
            # Written before the next group reads the queue: a job two kinds of runner
            # match goes to one of them.
            execution_ids = apply_claims(conn, claims, now)
            assignments.extend(
                Assignment(c.session_id, execution_id, _claimed(c, execution_id, now))
                for c, execution_id in zip(claims, execution_ids, strict=True)
            )
        return assignments

    def _admit_one_bound(
        self,
        conn: Connection,
        spec: JobSpec,
        demands: Sequence[Demand],
        actor: str,
        now: datetime,
    ) -> tuple[list[Job], list[Assignment]]:
        """One job for idle sessions that found the queue dry (PostgreSQL): the job, its
        event and its binding in one statement, an idle farm's whole path from submit
        to assignment. The same rules as :meth:`_bind_fresh` for one job."""
        job, bound = self._admission.admit_one_bound(
            conn,
            spec,
            now,
            actor=actor,
            sessions_for=lambda spec: _sessions_taking(demands, spec),
            claim_event=CLAIM.event,
        )
        if bound is None:
            return [job], []
        assert bound.execution_id is not None
        assert bound.session_id is not None
        assert bound.runner is not None
        claimed = _claimed(Claim(job, bound.runner, bound.session_id), bound.execution_id, now)
        return [job], [Assignment(bound.session_id, bound.execution_id, claimed)]

    def _bind_fresh(
        self, conn: Connection, demands: Sequence[Demand], admitted: Sequence[Job], now: datetime
    ) -> list[Assignment]:
        """Bind jobs this submit just queued to idle sessions for which the queue held
        nothing: the claim's rules (SPEC §5) over these jobs alone, without reading the
        queue. On an idle farm this is the whole path from submit to assignment.

        A job another replica queued in the moments before its wake-up reached this one
        may go second to ours: as with any two submits in flight at once, neither saw
        the other's commit when it started."""
        ready = runner_store.lock_sessions_to_claim_for(conn, [d.session_id for d in demands], now)
        waiting = sorted(
            (job for job in admitted if job.state is JobState.QUEUED and not job.spec.distributor),
            key=lambda job: (-job.spec.priority, job.spec.not_before or now, job.id),
        )
        claims: list[Claim] = []
        for demand in demands:
            if demand.session_id not in ready:
                continue
            for _ in range(demand.slots):
                job = next(
                    (
                        job
                        for job in waiting
                        if _may_take(demand, job.spec)
                        and store.acquire_coalesce_holds(conn, job.id, job.spec.coalesce_keys)
                    ),
                    None,
                )
                if job is None:
                    break
                waiting.remove(job)
                claims.append(Claim(job, demand.runner, demand.session_id))
        execution_ids = apply_claims(conn, claims, now)
        return [
            Assignment(c.session_id, execution_id, _claimed(c, execution_id, now))
            for c, execution_id in zip(claims, execution_ids, strict=True)
        ]

    async def any_queued(self) -> bool:
        """Whether any job waits in a queue for a runner."""
        return await self._ctx.db.run(store.any_queued)

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


def _sessions_taking(demands: Sequence[Demand], spec: JobSpec) -> list[int]:
    """The sessions, in the order of ``demands``, that may take a job of ``spec``."""
    return [d.session_id for d in demands if d.slots > 0 and _may_take(d, spec)]


def _may_take(demand: Demand, spec: JobSpec) -> bool:
    """SPEC §5.1: the runner's platform, and the job's labels a subset of the runner's."""
    return demand.platform == spec.platform and spec.labels <= demand.labels


def _claimed(claim: Claim, execution_id: int, now: datetime) -> Job:
    """The job as the claim left it, without reading it back."""
    return replace(
        claim.job,
        state=JobState.BUILDING,
        attempt=claim.job.attempt + 1,
        current_execution_id=execution_id,
        runner=claim.runner,
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
