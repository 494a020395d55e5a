"""The hub: every live runner session of this replica, the loop that assigns jobs, and
the loops that keep deadlines.

A submit hands its runnable jobs to idle sessions in its own transaction (the hub gives
it demands with their slots reserved, see :meth:`Hub.take_demands`). A submit, a
requeue, a freed slot or a new session also sets one event, and the assigner claims for
every session with free slots in one transaction, except for kinds of runner for which
the last claim found the queue dry: a freed slot of such a kind waits for a job to
arrive (a wake-up: every transaction that may make a job claimable announces one, and
it reaches this replica at the commit on any database). On PostgreSQL the same
changes made by other replicas arrive as notifications (lifecycle/messages.py), as do
their cancels, drains and evictions of runners whose streams live here
(:meth:`Hub.receive`). Backstops, for notifications lost while the connection was down:
every ``assign_sweep`` the assigner looks whether any job is queued and claims if so,
and every ``look`` the hub reads what the database says about its streams.

Two loops keep time. The deadline sweep runs every ``sweep`` while deadlines may fall at
any moment (a job is building, another replica is alive); otherwise it sleeps until the
next deadline the database knows of (a re-attach grace, an idle runner's silence, a
quarantine's end), at most ``sweep_idle``, and a claim on this replica wakes it. The due
loop sleeps until the next moment a waiting job becomes ready by time alone, at most
``due_backstop``; whatever may make jobs ready otherwise wakes it: at once when asked
(:meth:`Hub.wake_due`), within ``due_sweep`` when a job ended or waits again, or jobs
were submitted (:meth:`Hub.due_may_change`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from dispatcher.domain.model import (
    Assignment,
    JobSpec,
    ResultReport,
    Runner,
    RunnerHello,
    Verdict,
)
from dispatcher.domain.states import Outcome
from dispatcher.lifecycle.due import DueTimes
from dispatcher.lifecycle.executions import Executions
from dispatcher.lifecycle.jobs import Demand, Jobs, Kind
from dispatcher.lifecycle.messages import CancelOrder, Message, RunnerDrained, SessionsEnded
from dispatcher.lifecycle.schedules import Schedules
from dispatcher.lifecycle.sessions import Sessions, SweepReport
from dispatcher.runners.observer import HubObserver, NoObserver

log = logging.getLogger(__name__)

RETENTION_SWEEP_SECONDS = 60.0


@dataclass(frozen=True)
class ResultAck:
    execution_id: int
    verdict: Verdict


@dataclass(frozen=True)
class Drain:
    reason: str


# What a session's stream sends, in order. None ends the stream.
Outgoing = Assignment | CancelOrder | ResultAck | Drain


@dataclass(eq=False)
class LiveSession:
    id: int
    hello: RunnerHello
    resume_token: str
    held: set[int] = field(default_factory=set)
    # Slots promised to a claim in flight (the assigner's, or a submit's hand-off).
    reserved: int = 0
    # Executions this stream was told to cancel (a cancel may arrive more than once).
    cancelled: set[int] = field(default_factory=set)
    draining: bool = False
    closed: bool = False
    outbox: asyncio.Queue[Outgoing | None] = field(default_factory=asyncio.Queue)

    @property
    def name(self) -> str:
        return self.hello.name

    @property
    def free_slots(self) -> int:
        if self.closed or self.draining:
            return 0
        return max(0, self.hello.capacity - len(self.held) - self.reserved)

    def send(self, message: Outgoing) -> None:
        if not self.closed:
            self.outbox.put_nowait(message)

    def end(self) -> None:
        """Stop the stream: its handler returns and the session is detached or closed."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


@dataclass(frozen=True)
class HubTiming:
    heartbeat_interval: timedelta = timedelta(seconds=10)
    # Told to runners in Welcome: how often to send heartbeats while holding nothing.
    idle_heartbeat_interval: timedelta = timedelta(seconds=600)
    lease_renewal: timedelta = timedelta(seconds=5)
    # How often deadlines are looked at while they may fall at any moment.
    sweep: timedelta = timedelta(seconds=1)
    # Otherwise the sweep sleeps until the next deadline it knows of, at most this long.
    sweep_idle: timedelta = timedelta(seconds=10)
    # The due loop runs at most this often when told that jobs may have become ready
    # (a job ended, jobs were submitted)...
    due_sweep: timedelta = timedelta(seconds=1)
    # ...and at least this often, whatever it was told (a backstop: it sleeps until the
    # next due time it knows of).
    due_backstop: timedelta = timedelta(seconds=10)
    # On start-up, how long to hold new assignments while runners of a previous run
    # re-attach (the re-attach grace), so their jobs are decided first.
    startup_hold: timedelta = timedelta(seconds=10)
    # Told to runners in Welcome: how long their executions wait for a re-attach.
    reattach_grace: timedelta = timedelta(seconds=10)
    # On shutdown, how long running jobs may finish before streams are cut.
    shutdown_drain: timedelta = timedelta(seconds=5)
    # With no wake-up, the assigner still looks this often whether a job is queued,
    # and claims if so (a wake-up from another replica may have been lost).
    assign_sweep: timedelta = timedelta(seconds=2)
    # How often the hub reads what the database says about its streams (closed,
    # draining, cancels pending), in case a message from another replica was lost.
    look: timedelta = timedelta(seconds=5)


class Hub:
    def __init__(
        self,
        jobs: Jobs,
        executions: Executions,
        sessions: Sessions,
        timing: HubTiming,
        schedules: Schedules | None = None,
        observer: HubObserver | None = None,
        due_times: DueTimes | None = None,
    ) -> None:
        self._observer: HubObserver = observer or NoObserver()
        self._jobs = jobs
        self._executions = executions
        self._sessions = sessions
        self._schedules = schedules
        self._due_times = due_times
        self.timing = timing
        self._live: dict[int, LiveSession] = {}
        # How many streams of each kind of runner are held: a claim when every kind is
        # dry costs nothing, not a walk over ten thousand idle streams.
        self._kinds: Counter[Kind] = Counter()
        self._wakeup = asyncio.Event()
        # When the due loop and the deadline sweep run next (loop time).
        self._due = _Alarm()
        self._last_due_pass = -math.inf
        self._sweep_alarm = _Alarm()
        self._released = asyncio.Event()
        self._look_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = True
        # While runners of a previous run re-attach at start-up, nothing new is assigned.
        self._holding = False
        # Sessions heard from since the last sweep.
        self._heard: set[int] = set()
        # Counts drain messages, so that a look that read the database before one
        # arrived does not undo it.
        self._drain_messages = 0
        # What the last look found drained, and the drain messages it had seen: while
        # neither changes, every stream here already agrees with the database.
        self._looked_draining: frozenset[int] = frozenset()
        self._looked_drain_messages = -1
        # Runner kinds (platform, labels) for which the last claim found the queue dry:
        # a slot of that kind freeing up claims nothing until a job may have arrived
        # (wake), so a build ending on an idle farm costs no claim transaction.
        self._dry: set[Kind] = set()
        # Counts wake-ups: a claim that overlapped one may not call anything dry.
        self._arrivals = 0

    # --- wiring -------------------------------------------------------------------

    def wake(self) -> None:
        """Jobs may have become claimable (submitted, requeued, due, a key freed)."""
        self._arrivals += 1
        self._dry.clear()
        self._wakeup.set()

    def _capacity_freed(self) -> None:
        """A slot freed up or a stream came: worth a claim unless its kind is dry."""
        self._wakeup.set()

    def wake_due(self) -> None:
        """Waiting jobs may be ready now (a back-off cleared, a flavor added): the due
        loop runs at once."""
        self._due.bring_forward(asyncio.get_running_loop().time())

    def due_may_change(self) -> None:
        """A job ended or waits again, or jobs were submitted: waiting jobs may be ready,
        or due at another time. The due loop runs within ``due_sweep`` of its last run."""
        self._due.bring_forward(self._last_due_pass + self.timing.due_sweep.total_seconds())

    @property
    def due_sleeps_for(self) -> float:
        """Seconds until the due loop's next pass as planned now (inf while it runs)."""
        return self._due.at - asyncio.get_running_loop().time()

    def wake_sweep(self) -> None:
        """Deadlines now run (a job was claimed): sweep within ``sweep``, not after a
        quiet sleep."""
        loop_time = asyncio.get_running_loop().time()
        self._sweep_alarm.bring_forward(loop_time + self.timing.sweep.total_seconds())

    def look_soon(self) -> None:
        """Read what the database says about this replica's streams now (messages from
        other replicas may have been lost)."""
        self._look_wakeup.set()

    def receive(self, message: Message) -> None:
        """A message from another replica (or this one) about runner streams."""
        if isinstance(message, CancelOrder):
            self.cancel(message)
        elif isinstance(message, RunnerDrained):
            self.runner_drained(message.runner, message.draining, message.reason)
        elif isinstance(message, SessionsEnded):
            self.end_sessions(message.session_ids)
        else:
            self.wake()

    async def start(self, *, sole_replica: bool) -> None:
        await self._sessions.register_replica(sole=sole_replica)
        await self._sessions.sweep()
        hold = self.timing.startup_hold if await self._sessions.detached_executions() else None
        self._tasks = [
            asyncio.create_task(self._assign_forever(hold), name="assigner"),
            asyncio.create_task(
                self._every(self.timing.lease_renewal, self.renew_lease), name="lease"
            ),
            asyncio.create_task(self._sweep_forever(), name="deadlines"),
            asyncio.create_task(self._keep_due_forever(), name="due"),
            asyncio.create_task(self._look_forever(), name="look"),
        ]
        self.wake()

    async def stop(self) -> None:
        """Stop assigning, let running jobs finish for a while, then cut the streams. Cut
        sessions are detached, not closed: their runners re-attach to another replica or
        to this one restarted, and keep their jobs."""
        self._accepting = False
        for session in self._live.values():
            session.draining = True
        await self._wait_until_idle(self.timing.shutdown_drain)
        for session in list(self._live.values()):
            await self.close(session, "the dispatcher is shutting down", goodbye=False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._sessions.retire_replica()

    async def _wait_until_idle(self, limit: timedelta) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit.total_seconds()):
                while any(s.held for s in self._live.values()):
                    self._released.clear()
                    await self._released.wait()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def live_sessions(self) -> int:
        return len(self._live)

    # --- sessions -----------------------------------------------------------------

    async def open(self, hello: RunnerHello) -> LiveSession:
        opened = await self._sessions.open(hello)
        gone = [*opened.replaced, *([opened.resumed_from] if opened.resumed_from else [])]
        for old_id in gone:
            old = self._forget(old_id)
            if old is not None:
                old.end()
        session = LiveSession(
            opened.session_id,
            hello,
            opened.resume_token,
            held=set(opened.reattached),
            draining=opened.draining,
        )
        self._live[session.id] = session
        self._kinds[(hello.platform, hello.labels)] += 1
        log.info(
            "runner %s connected (session %d, capacity %d, re-attached %d)",
            hello.name,
            session.id,
            hello.capacity,
            len(opened.reattached),
            extra={"runner": hello.name},
        )
        self._capacity_freed()
        return session

    def _forget(self, session_id: int) -> LiveSession | None:
        session = self._live.pop(session_id, None)
        if session is not None:
            kind = (session.hello.platform, session.hello.labels)
            self._kinds[kind] -= 1
            if self._kinds[kind] <= 0:
                del self._kinds[kind]
        return session

    async def close(self, session: LiveSession, reason: str, *, goodbye: bool) -> None:
        """The stream ended. After a goodbye the session closes and its jobs move on at
        once; otherwise it is detached and its runner may re-attach within the grace."""
        session.end()
        if self._forget(session.id) is None:
            return
        if goodbye:
            moved = await self._sessions.close(session.id, reason)
            log.info(
                "runner %s left (session %d): %s; %d job(s) moved on",
                session.name,
                session.id,
                reason,
                len(moved),
                extra={"runner": session.name},
            )
        elif await self._sessions.detach(session.id, reason):
            log.info(
                "runner %s detached (session %d): %s; holding %d execution(s) for re-attach",
                session.name,
                session.id,
                reason,
                len(session.held),
                extra={"runner": session.name},
            )
        else:
            log.info(
                "runner %s disconnected (session %d): %s",
                session.name,
                session.id,
                reason,
                extra={"runner": session.name},
            )

    def cancel(self, order: CancelOrder) -> bool:
        """Deliver a cancel to the stream holding the execution, if it is on this replica
        (once per stream and execution). Returns whether the stream is here."""
        session = self._live.get(order.session_id)
        if session is None:
            return False
        if order.execution_id not in session.cancelled:
            session.cancelled.add(order.execution_id)
            session.send(order)
        return True

    def end_sessions(self, session_ids: Iterable[int]) -> int:
        """End the streams of these sessions, closed already (an eviction, a runner that
        connected again), if they are on this replica: they are forgotten here, so their
        handlers neither detach nor close them again. Returns how many ended."""
        ended = 0
        for session_id in session_ids:
            session = self._forget(session_id)
            if session is not None:
                log.info(
                    "runner %s (session %d): its session was closed; ending its stream",
                    session.name,
                    session.id,
                    extra={"runner": session.name},
                )
                session.end()
                ended += 1
        return ended

    async def set_draining(self, name: str, draining: bool, reason: str) -> Runner:
        runner = await self._sessions.set_draining(name, draining, reason)
        self.runner_drained(name, draining, reason)
        return runner

    def runner_drained(self, name: str, draining: bool, reason: str) -> None:
        """Runner ``name`` was drained (or undrained): tell its streams on this replica."""
        self._drain_messages += 1
        for session in self._live.values():
            if session.name == name and session.draining != draining:
                session.draining = draining
                if draining:
                    session.send(Drain(reason or "drained"))
        if not draining:
            self._capacity_freed()

    async def _keep_due_forever(self) -> None:
        """Queue jobs that became ready, make schedules' next jobs, forget old jobs: when
        the next job is due by time, when woken (see :meth:`wake_due`,
        :meth:`due_may_change`), and at least every ``due_backstop``."""
        last_retention = -math.inf
        loop = asyncio.get_running_loop()
        self._due.bring_forward(loop.time())
        while True:
            await self._due.wait()
            started = self._last_due_pass = loop.time()
            wait = self.timing.due_backstop.total_seconds()
            try:
                made = await self._schedules.tick() if self._schedules is not None else 0
                moved = await self._jobs.queue_due()
                if made or moved:
                    # More may be ready than one pass takes, or made ready by this one.
                    wait = self.timing.due_sweep.total_seconds()
                if started - last_retention > RETENTION_SWEEP_SECONDS:
                    last_retention = started
                    await self._jobs.expire_finished()
                due_in = await self._due_times.next_in() if self._due_times else None
                if due_in is not None:
                    # A hair after it, so that the job is due by then on every clock.
                    self._due.bring_forward(loop.time() + due_in.total_seconds() + 0.005)
            except Exception:
                log.exception("the due sweep failed; retrying soon")
                wait = self.timing.due_sweep.total_seconds()
            self._due.bring_forward(started + wait)

    async def renew_lease(self) -> None:
        await self._sessions.renew_lease(set(self._live))

    async def _sweep_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.timing.sweep.total_seconds()
        self._sweep_alarm.bring_forward(loop.time() + interval)
        while True:
            late = await self._sweep_alarm.wait()
            started = loop.time()
            wait = interval
            try:
                # Far later than planned: this process stood still (frozen, starved),
                # and the heartbeats its runners sent meanwhile are still unread.
                report = await self.sweep(stood_still=late > 2 * interval + 1)
                if not report.in_flight and report.swept_at is not None:
                    quiet = self.timing.sweep_idle.total_seconds()
                    if report.next_deadline is not None:
                        until = (report.next_deadline - report.swept_at).total_seconds()
                        quiet = min(quiet, until)
                    wait = max(interval, quiet)
            except Exception:
                log.exception("the deadline sweep failed; retrying soon")
            self._sweep_alarm.bring_forward(started + wait)

    async def sweep(self, *, stood_still: bool = False) -> SweepReport:
        heard, self._heard = self._heard, set()
        report = await self._sessions.sweep(judge_silence=not stood_still, heard=heard)
        for session_id in report.closed_sessions:
            session = self._forget(session_id)
            if session is not None:
                log.warning(
                    "runner %s (session %d) missed its heartbeat deadline; closed",
                    session.name,
                    session.id,
                    extra={"runner": session.name},
                )
                session.end()
        for order in report.cancels:
            self.cancel(order)
            session = self._live.get(order.session_id)
            if session is not None:
                self._release(session, order.execution_id)
        return report

    # --- runner reports -----------------------------------------------------------

    async def result(self, session: LiveSession, report: ResultReport) -> None:
        verdict = await self._executions.report_result(session.id, session.name, report)
        if verdict.applied:
            self._observer.finished(report.execution_id, report.outcome)
            log.info(
                "job %s: execution %d on runner %s ended %s",
                verdict.job_id,
                report.execution_id,
                session.name,
                report.outcome.value,
                extra={
                    "job_id": verdict.job_id,
                    "execution_id": report.execution_id,
                    "runner": session.name,
                },
            )
        self._release(session, report.execution_id)
        session.send(ResultAck(report.execution_id, verdict))

    async def accept(self, session: LiveSession, execution_id: int) -> None:
        verdict = await self._executions.accept(session.id, session.name, execution_id)
        self._refuse_unless(session, execution_id, verdict)

    async def refuse(self, session: LiveSession, execution_id: int, reason: str) -> None:
        await self._executions.refuse(session.id, session.name, execution_id, reason)
        self._release(session, execution_id)

    async def commit_point(self, session: LiveSession, execution_id: int) -> None:
        verdict = await self._executions.commit_point(session.id, session.name, execution_id)
        self._refuse_unless(session, execution_id, verdict)

    async def cancel_ack(self, session: LiveSession, execution_id: int) -> None:
        verdict = await self._executions.cancel_ack(session.id, session.name, execution_id)
        if verdict.applied:
            self._observer.finished(execution_id, Outcome.CANCELLED)
        self._release(session, execution_id)

    async def heartbeat(
        self, session: LiveSession, progress: list[tuple[int, str | None, int | None]]
    ) -> None:
        await self._executions.heartbeat(session.id, progress)

    def heard(self, session: LiveSession) -> None:
        """The runner said something: it is alive. The next sweep, which judges silence,
        writes it to the database, so an idle heartbeat costs no transaction."""
        self._heard.add(session.id)

    def _release(self, session: LiveSession, execution_id: int) -> None:
        if execution_id in session.held:
            session.held.discard(execution_id)
            self._released.set()
            self._capacity_freed()

    def _refuse_unless(self, session: LiveSession, execution_id: int, verdict: Verdict) -> None:
        # A runner working on an execution that no longer speaks for its job must stop.
        if not verdict.applied:
            session.send(CancelOrder(session.id, execution_id, verdict.reason))
            self._release(session, execution_id)

    # --- the assigner -------------------------------------------------------------

    async def _assign_forever(self, hold: timedelta | None) -> None:
        if hold is not None:
            self._holding = True
            log.info(
                "holding new assignments for %.0f s while runners re-attach", hold.total_seconds()
            )
            await asyncio.sleep(hold.total_seconds())
            await self.sweep()
            self._holding = False
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.assign_sweep.total_seconds()):
                    woken = await self._wakeup.wait()
            self._wakeup.clear()
            try:
                # The backstop claims only when some job waits: one look at the claim
                # order's index instead of a claim for every idle stream. A job found
                # waiting unclaimed means a wake-up was lost: nothing is dry then.
                if not woken and await self._jobs.any_queued():
                    self._dry.clear()
                    woken = True
                if woken:
                    await self.assign_once()
            except Exception:
                log.exception("assigning jobs failed; retrying on the next wake-up")
                await asyncio.sleep(0.5)
                self.wake()

    async def assign_once(self) -> int:
        demands = self.take_demands(skip=self._dry)
        if not demands:
            return 0
        arrivals = self._arrivals
        assignments: list[Assignment] = []
        dry: set[Kind] = set()
        try:
            assignments = await self._jobs.claim(demands, dry=dry)
        finally:
            self.deliver(demands, assignments)
        if arrivals == self._arrivals:  # no job may have come while the claim read
            self._dry |= dry
        return len(assignments)

    def take_demands(
        self, jobs: Sequence[JobSpec] | None = None, *, skip: Collection[Kind] = ()
    ) -> list[Demand]:
        """Sessions with free slots, as a claim's demands; the slots are reserved until
        :meth:`deliver`, so two claims in flight never fill one slot twice. Given the
        ``jobs`` of a submit, only sessions that may run one of them (SPEC §5.1) and no
        more slots than there are jobs: a submit of one job claims for one slot, not for
        every idle runner. Sessions of a kind in ``skip`` are left out."""
        if not self._accepting or self._holding or not self._live:
            return []
        if skip and all(kind in skip for kind in self._kinds):
            return []
        sessions = list(self._live.values())
        # From a random place, round the ring: no runner always gets the head of the
        # queue, and a submit of a few jobs looks at a few sessions, not at all of them.
        start = random.randrange(len(sessions))  # noqa: S311 (fairness, not a secret)
        kinds = {(spec.platform, spec.labels) for spec in jobs} if jobs is not None else None
        budget = len(jobs) if jobs is not None else None
        demands = []
        for s in itertools.chain(sessions[start:], sessions[:start]):
            free = s.free_slots
            if free <= 0 or (skip and (s.hello.platform, s.hello.labels) in skip):
                continue
            if kinds is not None and not any(
                platform == s.hello.platform and labels <= s.hello.labels
                for platform, labels in kinds
            ):
                continue
            slots = free if budget is None else min(free, budget)
            kind = (s.hello.platform, s.hello.labels)
            dry = jobs is not None and kind in self._dry
            demands.append(Demand(s.id, s.name, s.hello.platform, s.hello.labels, slots, dry))
            s.reserved += slots
            if budget is not None:
                budget -= slots
                if budget == 0:
                    break
        return demands

    def deliver(self, demands: Sequence[Demand], assignments: Sequence[Assignment]) -> None:
        """Free the slots :meth:`take_demands` reserved, and send each assignment."""
        for demand in demands:
            session = self._live.get(demand.session_id)
            if session is not None:
                session.reserved -= demand.slots
        if assignments:
            self.wake_sweep()
        for assignment in assignments:
            self._observer.assigned(assignment)
            session = self._live.get(assignment.session_id)
            if session is None or session.closed:
                continue  # its detach/close decides the job
            session.held.add(assignment.execution_id)
            session.send(assignment)
            log.debug(
                "job %d assigned to runner %s (execution %d)",
                assignment.job.id,
                session.name,
                assignment.execution_id,
                extra={
                    "job_id": assignment.job.id,
                    "execution_id": assignment.execution_id,
                    "runner": session.name,
                },
            )

    # --- the backstop for lost messages ---------------------------------------------

    async def _look_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.look.total_seconds()):
                    await self._look_wakeup.wait()
            self._look_wakeup.clear()
            try:
                await self.look()
            except Exception:
                log.exception("reading the state of this replica's streams failed")

    async def look(self) -> None:
        """Bring the streams here in line with the database: end those whose sessions
        were closed, drain (or undrain) them as their runners are, and (re)send cancels
        their runners have not confirmed."""
        if not self._live:
            return
        drain_messages = self._drain_messages
        states = await self._sessions.look(list(self._live))
        self.end_sessions(states.closed)
        # A drain message that arrived meanwhile is newer than what was read.
        drains_current = self._accepting and drain_messages == self._drain_messages
        undrained = False
        # A stream's drain flag changes only by a drain message or by opening with its
        # runner's state from the database: with neither news nor a change in the
        # database since the last look, there is nothing to compare (an idle server
        # holding many streams would otherwise visit each of them every look).
        news = (
            states.draining != self._looked_draining
            or drain_messages != self._looked_drain_messages
        )
        if drains_current and news:
            for session in self._live.values():
                draining = session.id in states.draining
                if session.draining != draining:
                    session.draining = draining
                    if draining:
                        session.send(Drain("drained"))
                    else:
                        undrained = True
            self._looked_draining = states.draining
            self._looked_drain_messages = drain_messages
        for order in states.cancels:
            self.cancel(order)
        if undrained:
            self._capacity_freed()

    @staticmethod
    async def _every(interval: timedelta, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval.total_seconds())
            try:
                await work()
            except Exception:
                log.exception("periodic task %s failed", getattr(work, "__name__", work))


class _Alarm:
    """When a loop runs next (loop time): a moment others may only bring forward."""

    def __init__(self) -> None:
        self.at = math.inf
        self._changed = asyncio.Event()

    def bring_forward(self, at: float) -> None:
        if at < self.at:
            self.at = at
            self._changed.set()

    async def wait(self) -> float:
        """Sleep until the alarm's moment; returns how late it woke. The moment is
        cleared: a call to :meth:`bring_forward` from now on sets the next one."""
        loop = asyncio.get_running_loop()
        while (delay := self.at - loop.time()) > 0:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._changed.wait()
        late = loop.time() - self.at
        self.at = math.inf
        return late
