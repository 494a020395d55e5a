"""Runner sessions and replica liveness: opening, re-attaching, detaching and closing
streams, and deciding the jobs of streams that are gone for good (SPEC §5.7, §6).

A session is *attached* while its stream lives, *detached* when the stream broke but the
runner may still re-attach with its resume token (its executions stay bound), and
*closed* when that chance is over: then its unfinished executions are lost and each job
follows its on-lost policy.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection

from dispatcher import __version__
from dispatcher.domain.errors import NotFound
from dispatcher.domain.model import Runner, RunnerHello, RunnerState
from dispatcher.domain.states import CONFIRM_CANCEL, REFUSE, TIME_OUT, JobState, Outcome
from dispatcher.domain.validation import check_hello
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.messages import CancelOrder, RunnerDrained, SessionsEnded, announce
from dispatcher.lifecycle.transitions import apply, count_runner_loss, lose_execution
from dispatcher.store import executions as execution_store
from dispatcher.store import horizons as horizon_store
from dispatcher.store import jobs as job_store
from dispatcher.store import reports as report_store
from dispatcher.store import runners as store


@dataclass(frozen=True)
class OpenedSession:
    session_id: int
    resume_token: str
    # Earlier sessions of the same runner name, closed and fenced by this one.
    replaced: tuple[int, ...]
    # Executions taken over from the session the resume token named.
    reattached: tuple[int, ...] = ()
    # The session the resume token named, now closed in favour of this one.
    resumed_from: int | None = None
    draining: bool = False


@dataclass(frozen=True)
class StreamStates:
    """What the database says about streams this replica holds (see ``Sessions.look``)."""

    # Closed meanwhile (evicted, replaced): their streams must end.
    closed: frozenset[int] = frozenset()
    # Their runner is draining: no new work.
    draining: frozenset[int] = frozenset()
    # Executions whose cancel the runner has not confirmed: tell it (again).
    cancels: tuple[CancelOrder, ...] = ()


@dataclass
class SweepReport:
    """What a sweep decided, for the hub to carry out on live streams."""

    closed_sessions: list[int] = field(default_factory=list)
    cancels: list[CancelOrder] = field(default_factory=list)
    requeued: int = 0
    # A runner's quarantine ended since the last sweep: it may take work again.
    quarantine_ended: bool = False
    # Whether deadlines may fall at any moment (a job is building, another replica is
    # alive): then the next sweep comes at the usual interval. Otherwise no deadline
    # falls before ``next_deadline`` unless a job is claimed.
    in_flight: bool = True
    next_deadline: datetime | None = None
    # The sweep's "now".
    swept_at: datetime | None = None


log = logging.getLogger(__name__)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._last_sweep_at: datetime | None = None
        # The end of the lease that the last renewal found run out, if it did.
        self._lapsed_lease_end: datetime | None = None

    async def open(self, hello: RunnerHello) -> OpenedSession:
        check_hello(hello, self._ctx.limits)
        resume_token = secrets.token_urlsafe(32)

        def work(conn: Connection) -> OpenedSession:
            now = self._ctx.clock.now()
            resumed = (
                store.resumable_session(conn, hello.name, _hash(hello.resume_token))
                if hello.resume_token
                else None
            )
            previous = store.runner_state(conn, hello.name)
            draining = previous is RunnerState.DRAINING
            store.upsert_runner(
                conn, hello, RunnerState.DRAINING if draining else RunnerState.ONLINE, now
            )
            session_id = store.open_session(
                conn, hello.name, self._ctx.replica_id, _hash(resume_token), now
            )
            reattached: list[int] = []
            if resumed is not None:
                reattached = execution_store.move_open_executions(conn, resumed, session_id)
                store.close_session(conn, resumed, f"re-attached as session {session_id}", now)
            replaced = [
                s for s in store.open_sessions_of_runner(conn, hello.name) if s != session_id
            ]
            for old in replaced:
                self._close(conn, old, "replaced by a new session of the same runner")
            ended = (*replaced, *([resumed] if resumed is not None else []))
            if ended:
                # A stream of theirs may still be open on another replica: it ends there.
                announce(conn, SessionsEnded(ended, f"runner {hello.name} connected again"))
            return OpenedSession(
                session_id, resume_token, tuple(replaced), tuple(reattached), resumed, draining
            )

        opened = await self._ctx.db.run(work)
        if opened.replaced:
            self._ctx.wake()
        return opened

    async def detach(self, session_id: int, reason: str) -> bool:
        """The stream broke. A session holding executions waits for its runner to
        re-attach; one holding none is closed at once. Returns whether it was detached."""

        def work(conn: Connection) -> bool:
            if execution_store.open_executions_of_session(conn, session_id):
                return store.detach_session(conn, session_id, self._ctx.clock.now())
            self._close(conn, session_id, reason)
            return False

        return await self._ctx.db.run(work)

    async def close(self, session_id: int, reason: str) -> list[tuple[int, JobState]]:
        """Close a session now; its unfinished executions are lost and their jobs follow
        their on-lost policy. Returns (job id, new state) for each job moved."""
        moved = await self._ctx.db.run(lambda conn: self._close(conn, session_id, reason))
        if any(state is JobState.QUEUED for _, state in moved):
            self._ctx.wake()
        return moved

    def close_in(
        self, conn: Connection, session_id: int, reason: str
    ) -> list[tuple[int, JobState]]:
        """``close`` in the caller's transaction (an eviction closes several at once)."""
        return self._close(conn, session_id, reason)

    def _close(self, conn: Connection, session_id: int, reason: str) -> list[tuple[int, JobState]]:
        now = self._ctx.clock.now()
        if not store.close_session(conn, session_id, reason, now):
            return []
        runner = store.session_runner(conn, session_id) or "?"
        moved = []
        for execution_id, job_id in execution_store.open_executions_of_session(conn, session_id):
            state = lose_execution(
                conn,
                execution_id,
                job_id,
                now,
                actor="dispatcher",
                cause=f"runner {runner} lost: {reason}",
                rules=self._ctx.rules,
            )
            if state is not None:
                moved.append((job_id, state))
        if not store.open_sessions_of_runner(conn, runner):
            state_now = store.runner_state(conn, runner)
            if state_now is not RunnerState.DRAINING:
                store.set_runner_state(conn, runner, RunnerState.OFFLINE, now)
        return moved

    async def list_runners(self) -> list[Runner]:
        return await self._ctx.db.run(store.list_runners)

    async def set_draining(self, name: str, draining: bool, reason: str = "") -> Runner:
        """Drain (or undrain) a runner by name; returns the runner as it is now. Every
        replica hears of it: the one holding the runner's stream tells the runner."""

        def work(conn: Connection) -> Runner:
            if store.runner_state(conn, name) is None:
                raise NotFound(f"runner {name!r} is not known to this dispatcher")
            sessions = store.open_sessions_of_runner(conn, name)
            if draining:
                state = RunnerState.DRAINING
            else:
                state = RunnerState.ONLINE if sessions else RunnerState.OFFLINE
            store.set_runner_state(conn, name, state, self._ctx.clock.now())
            announce(conn, RunnerDrained(name, draining, reason))
            [runner] = store.list_runners(conn, name)
            return runner

        runner = await self._ctx.db.run(work)
        if not draining:
            self._ctx.wake()
        return runner

    # --- deadlines ----------------------------------------------------------------

    async def sweep(
        self, *, judge_silence: bool = True, heard: Collection[int] = ()
    ) -> SweepReport:
        """Apply every deadline once: dead replicas' sessions detach; silent sessions and
        detached ones past the grace close; unaccepted assignments go back to the queue;
        cancels the runner never confirmed are forced. The cancels to send are in the
        report, and announced to every replica (the stream may live on another).

        ``judge_silence=False`` skips closing this replica's silent sessions, for a
        sweep right after this process itself stood still (frozen, starved): the
        heartbeats its runners sent meanwhile are still unread."""
        report = await self._ctx.db.run(lambda conn: self._sweep(conn, judge_silence, heard))
        if report.requeued or report.closed_sessions or report.quarantine_ended:
            self._ctx.wake()
        return report

    def _sweep(
        self, conn: Connection, judge_silence: bool = True, heard: Collection[int] = ()
    ) -> SweepReport:
        now = self._ctx.clock.now()
        deadlines = self._ctx.deadlines
        report = SweepReport(swept_at=now)
        # Streams of this replica whose runners spoke since the last sweep: alive now.
        report_store.touch_sessions(conn, heard, now)
        since = self._last_sweep_at or now - deadlines.heartbeat_timeout
        report.quarantine_ended = store.quarantines_ended_between(conn, since, now)
        self._last_sweep_at = now
        # The grace of a dead replica's sessions runs from the end of its lease.
        orphaned = store.orphaned_attached_sessions(conn, self._ctx.replica_id, now)
        for session_id, lease_end in orphaned:
            store.detach_session(conn, session_id, lease_end)
        if orphaned:
            log.warning(
                "%d session(s) of replicas whose lease ran out detached; their runners may "
                "re-attach within the grace",
                len(orphaned),
            )
        silent = (
            store.attached_sessions_silent_since(
                conn,
                self._ctx.replica_id,
                busy_cutoff=now - deadlines.heartbeat_timeout,
                idle_cutoff=now - deadlines.idle_heartbeat_timeout,
            )
            if judge_silence
            else []
        )
        for session_id in silent:
            self._close(conn, session_id, "no heartbeat within the deadline")
            report.closed_sessions.append(session_id)
        for session_id in store.sessions_detached_before(conn, now - deadlines.reattach_grace):
            self._close(conn, session_id, "it did not re-attach within the grace")
            report.closed_sessions.append(session_id)
        for execution_id, job_id, session_id in execution_store.unaccepted_executions(
            conn, now - deadlines.accept_timeout
        ):
            cause = "the runner did not accept the assignment in time"
            execution_store.finish_execution(conn, execution_id, Outcome.LOST, now, info=cause)
            job = job_store.get_job(conn, job_id, for_update=True)
            if job is not None and job.current_execution_id == execution_id:
                report.requeued += apply(conn, job, REFUSE, now, actor="dispatcher", cause=cause)
                runner = store.session_runner(conn, session_id)
                if runner:
                    count_runner_loss(conn, runner, job_id, now, self._ctx.rules)
            report.cancels.append(CancelOrder(session_id, execution_id, cause))
        for job_id, execution_id, holder in job_store.overrun_executions(conn, now):
            # SPEC: past its maximum execution time a job is cancelled and FAILED; the
            # runner is told to stop, and its late result is fenced off.
            job = job_store.get_job(conn, job_id, for_update=True)
            if job is None or job.current_execution_id != execution_id:
                continue
            limit = job.spec.max_run.total_seconds() if job.spec.max_run else 0
            cause = f"timed out: running longer than its max_run of {limit:g} s"
            execution_store.finish_execution(conn, execution_id, Outcome.FAILED, now, info=cause)
            apply(conn, job, TIME_OUT, now, actor="dispatcher", cause=cause)
            if holder is not None:
                report.cancels.append(CancelOrder(holder, execution_id, cause))
        for job_id, execution_id in job_store.overdue_cancels(conn, now - deadlines.cancel_grace):
            cause = "cancelled; the runner did not confirm within the grace"
            execution = execution_store.get_execution(conn, execution_id)
            execution_store.finish_execution(conn, execution_id, Outcome.CANCELLED, now, info=cause)
            job = job_store.get_job(conn, job_id, for_update=True)
            if job is not None:
                apply(conn, job, CONFIRM_CANCEL, now, actor="dispatcher", cause=cause)
            if execution is not None and execution.session_id is not None:
                report.cancels.append(CancelOrder(execution.session_id, execution_id, cause))
        for order in report.cancels:
            announce(conn, order)
        self._horizon(conn, now, report)
        return report

    def _horizon(self, conn: Connection, now: datetime, report: SweepReport) -> None:
        """When the next deadline falls, as far as the database says now."""
        deadlines = self._ctx.deadlines
        horizon = horizon_store.sweep_horizon(conn, self._ctx.replica_id, now)
        report.in_flight = horizon.in_flight
        ends = [
            # A session opened from now on falls silent no earlier than this.
            now + deadlines.idle_heartbeat_timeout,
            horizon.first_detached + deadlines.reattach_grace if horizon.first_detached else None,
            horizon.oldest_heard + deadlines.idle_heartbeat_timeout
            if horizon.oldest_heard
            else None,
            horizon.quarantine_end,
        ]
        report.next_deadline = min((end for end in ends if end is not None), default=None)

    async def look(self, session_ids: Collection[int]) -> StreamStates:
        """What the database says about these streams of this replica: a backstop for
        messages from other replicas that did not arrive (the notification connection
        was down)."""

        wanted = set(session_ids)

        def read(conn: Connection) -> StreamStates:
            # Read by replica, not by session. The open sessions are compared by count
            # and sum of ids first: when those match the streams held here, nothing was
            # closed (save a closed one and one open in the database but not held here
            # whose ids sum alike: the latter is silent, so it closes in time, and the
            # next look sees the difference). Only on a difference are the ids read.
            replica = self._ctx.replica_id
            if store.open_streams_digest(conn, replica) == (len(wanted), sum(wanted)):
                closed: frozenset[int] = frozenset()
            else:
                closed = frozenset(wanted - store.open_streams_of_replica(conn, replica))
            return StreamStates(
                closed=closed,
                draining=frozenset(store.draining_streams_of_replica(conn, replica)),
                cancels=tuple(
                    CancelOrder(session_id, execution_id, "cancelled")
                    for session_id, execution_id in store.cancels_pending_on(
                        conn, self._ctx.replica_id
                    )
                    if session_id in wanted
                ),
            )

        return await self._ctx.db.run(read)

    # --- replicas -----------------------------------------------------------------

    async def register_replica(self, *, sole: bool = False) -> None:
        """Write this replica's liveness row. ``sole``: no other replica can be alive (the
        embedded SQLite mode), so their sessions are detached at once."""

        def work(conn: Connection) -> None:
            now = self._ctx.clock.now()
            store.register_replica(
                conn,
                self._ctx.replica_id,
                __version__,
                now,
                now + self._ctx.deadlines.replica_lease,
            )
            if sole:
                store.expire_other_replicas(conn, self._ctx.replica_id, now)

        await self._ctx.db.run(work)

    async def renew_lease(self, live: Collection[int] = ()) -> list[int]:
        """Extend this replica's lease. ``live``: the sessions whose streams it holds;
        those that other replicas detached because the lease had run out (this process
        stood still for a while) are attached again. Returns them."""

        def work(conn: Connection) -> list[int]:
            now = self._ctx.clock.now()
            lease_until = now + self._ctx.deadlines.replica_lease
            held = store.replica_lease_until(conn, self._ctx.replica_id)
            lapsed = held is not None and held < now
            # Others detach this replica's sessions at the end of its lease once it ran
            # out. A detach they read before this renewal but commit after it carries
            # that same end: the next renewal still looks for it.
            lease_ends = {end for end in (self._lapsed_lease_end, held if lapsed else None) if end}
            reattached = store.reattach_orphaned_sessions(
                conn, self._ctx.replica_id, live, lease_ends
            )
            if not store.renew_replica(conn, self._ctx.replica_id, lease_until):
                store.register_replica(conn, self._ctx.replica_id, __version__, now, lease_until)
            self._lapsed_lease_end = held if lapsed else None
            return reattached

        reattached = await self._ctx.db.run(work)
        if reattached:
            log.warning(
                "this replica's lease had run out (it stood still); %d session(s) that "
                "other replicas detached meanwhile are attached again",
                len(reattached),
            )
        return reattached

    async def retire_replica(self) -> None:
        await self._ctx.db.run(lambda conn: store.remove_replica(conn, self._ctx.replica_id))

    async def live_replicas(self) -> int:
        return await self._ctx.db.run(
            lambda conn: store.live_replica_count(conn, self._ctx.clock.now())
        )

    async def detached_executions(self) -> int:
        """How many executions wait for their runner to re-attach (anywhere)."""

        def work(conn: Connection) -> int:
            now = self._ctx.clock.now()
            count = 0
            for session_id in store.sessions_detached_before(
                conn, now + self._ctx.deadlines.reattach_grace
            ):
                count += len(execution_store.open_executions_of_session(conn, session_id))
            return count

        return await self._ctx.db.run(work)
