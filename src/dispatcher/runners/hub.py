"""The hub: every live runner session of this replica, the loop that assigns jobs, and
the loops that keep deadlines.

Wake-ups are in-process: a submit, a requeue, a freed slot or a new session sets one
event, and the assigner claims for every session with free slots in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from dispatcher.domain.model import Assignment, ResultReport, Runner, RunnerHello, Verdict
from dispatcher.domain.states import Outcome
from dispatcher.lifecycle.executions import Executions
from dispatcher.lifecycle.jobs import CancelOrder, Demand, Jobs
from dispatcher.lifecycle.schedules import Schedules
from dispatcher.lifecycle.sessions import Sessions
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
        return max(0, self.hello.capacity - len(self.held))

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
    lease_renewal: timedelta = timedelta(seconds=5)
    sweep: timedelta = timedelta(seconds=1)
    due_sweep: timedelta = timedelta(seconds=1)
    # On start-up, how long to hold new assignments while runners of a previous run
    # re-attach (the re-attach grace), so their jobs are decided first.
    startup_hold: timedelta = timedelta(seconds=10)
    # Told to runners in Welcome: how long their executions wait for a re-attach.
    reattach_grace: timedelta = timedelta(seconds=10)
    # On shutdown, how long running jobs may finish before streams are cut.
    shutdown_drain: timedelta = timedelta(seconds=5)


class Hub:
    def __init__(
        self,
        jobs: Jobs,
        executions: Executions,
        sessions: Sessions,
        timing: HubTiming,
        schedules: Schedules | None = None,
        observer: HubObserver | None = None,
    ) -> None:
        self._observer: HubObserver = observer or NoObserver()
        self._jobs = jobs
        self._executions = executions
        self._sessions = sessions
        self._schedules = schedules
        self.timing = timing
        self._live: dict[int, LiveSession] = {}
        self._wakeup = asyncio.Event()
        self._due_wakeup = asyncio.Event()
        self._released = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = True

    # --- wiring -------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    def wake_due(self) -> None:
        self._due_wakeup.set()

    async def start(self, *, sole_replica: bool) -> None:
        await self._sessions.register_replica(sole=sole_replica)
        await self._sessions.sweep()
        hold = self.timing.startup_hold if await self._sessions.detached_executions() else None
        self._tasks = [
            asyncio.create_task(self._assign_forever(hold), name="assigner"),
            asyncio.create_task(
                self._every(self.timing.lease_renewal, self._sessions.renew_lease), name="lease"
            ),
            asyncio.create_task(self._every(self.timing.sweep, self.sweep), name="deadlines"),
            asyncio.create_task(self._keep_due_forever(), name="due"),
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
            old = self._live.pop(old_id, None)
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
        log.info(
            "runner %s connected (session %d, capacity %d, re-attached %d)",
            hello.name,
            session.id,
            hello.capacity,
            len(opened.reattached),
            extra={"runner": hello.name},
        )
        self.wake()
        return session

    async def close(self, session: LiveSession, reason: str, *, goodbye: bool) -> None:
        """The stream ended. After a goodbye the session closes and its jobs move on at
        once; otherwise it is detached and its runner may re-attach within the grace."""
        session.end()
        if self._live.pop(session.id, None) is None:
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
        """Deliver a cancel to the stream holding the execution, if it is on this replica."""
        session = self._live.get(order.session_id)
        if session is None:
            return False
        session.send(order)
        return True

    def end_streams(self, name: str) -> int:
        """End the streams of runner ``name`` on this replica whose sessions were closed
        already (an eviction): they are forgotten here, so their handlers neither detach
        nor close them again. Returns how many ended."""
        ended = [s for s in self._live.values() if s.name == name]
        for session in ended:
            del self._live[session.id]
            session.end()
        return len(ended)

    async def set_draining(self, name: str, draining: bool, reason: str) -> Runner:
        runner = await self._sessions.set_draining(name, draining)
        for session in self._live.values():
            if session.name == name:
                session.draining = draining
                if draining:
                    session.send(Drain(reason))
        if not draining:
            self.wake()
        return runner

    async def _keep_due_forever(self) -> None:
        """Queue jobs that became ready, make schedules' next jobs, forget old jobs: at
        every due sweep, and at once when woken (a back-off cleared, a flavor added)."""
        last_retention = 0.0
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timing.due_sweep.total_seconds()):
                    await self._due_wakeup.wait()
            self._due_wakeup.clear()
            try:
                if self._schedules is not None:
                    await self._schedules.tick()
                await self._jobs.queue_due()
                if loop.time() - last_retention > RETENTION_SWEEP_SECONDS:
                    last_retention = loop.time()
                    await self._jobs.expire_finished()
            except Exception:
                log.exception("the due sweep failed; retrying on the next one")

    async def sweep(self) -> None:
        report = await self._sessions.sweep()
        for session_id in report.closed_sessions:
            session = self._live.pop(session_id, None)
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

    def _release(self, session: LiveSession, execution_id: int) -> None:
        if execution_id in session.held:
            session.held.discard(execution_id)
            self._released.set()
            self.wake()

    def _refuse_unless(self, session: LiveSession, execution_id: int, verdict: Verdict) -> None:
        # A runner working on an execution that no longer speaks for its job must stop.
        if not verdict.applied:
            session.send(CancelOrder(session.id, execution_id, verdict.reason))
            self._release(session, execution_id)

    # --- the assigner -------------------------------------------------------------

    async def _assign_forever(self, hold: timedelta | None) -> None:
        if hold is not None:
            log.info(
                "holding new assignments for %.0f s while runners re-attach", hold.total_seconds()
            )
            await asyncio.sleep(hold.total_seconds())
            await self.sweep()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self.assign_once()
            except Exception:
                log.exception("assigning jobs failed; retrying on the next wake-up")
                await asyncio.sleep(0.5)
                self.wake()

    async def assign_once(self) -> int:
        sessions = [s for s in self._live.values() if s.free_slots > 0]
        if not sessions or not self._accepting:
            return 0
        random.shuffle(sessions)  # no runner always gets the head of the queue
        demands = [
            Demand(s.id, s.name, s.hello.platform, s.hello.labels, s.free_slots) for s in sessions
        ]
        assignments = await self._jobs.claim(demands)
        for assignment in assignments:
            self._observer.assigned(assignment)
            session = self._live.get(assignment.session_id)
            if session is None or session.closed:
                continue  # its detach/close decides the job
            session.held.add(assignment.execution_id)
            session.send(assignment)
            log.info(
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
        return len(assignments)

    @staticmethod
    async def _every(interval: timedelta, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval.total_seconds())
            try:
                await work()
            except Exception:
                log.exception("periodic task %s failed", getattr(work, "__name__", work))
