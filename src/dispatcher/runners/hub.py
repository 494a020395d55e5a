"""The hub: every live runner session of this replica, and the loop that assigns jobs.

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

from dispatcher.domain.model import Assignment, ResultReport, RunnerHello, Verdict
from dispatcher.lifecycle.executions import Executions
from dispatcher.lifecycle.jobs import CancelOrder, Demand, Jobs
from dispatcher.lifecycle.sessions import Sessions

log = logging.getLogger(__name__)


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
        """Stop the stream: its handler closes it and the session is closed."""
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


@dataclass(frozen=True)
class HubTiming:
    heartbeat_interval: timedelta = timedelta(seconds=10)
    lease_renewal: timedelta = timedelta(seconds=5)
    orphan_sweep: timedelta = timedelta(seconds=5)
    due_sweep: timedelta = timedelta(seconds=1)


class Hub:
    def __init__(
        self, jobs: Jobs, executions: Executions, sessions: Sessions, timing: HubTiming
    ) -> None:
        self._jobs = jobs
        self._executions = executions
        self._sessions = sessions
        self.timing = timing
        self._live: dict[int, LiveSession] = {}
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = True

    # --- wiring -------------------------------------------------------------------

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        await self._sessions.register_replica()
        await self._sessions.recover_orphans()
        self._tasks = [
            asyncio.create_task(self._assign_forever(), name="assigner"),
            asyncio.create_task(
                self._every(self.timing.lease_renewal, self._sessions.renew_lease), name="lease"
            ),
            asyncio.create_task(
                self._every(self.timing.orphan_sweep, self._sessions.recover_orphans),
                name="orphans",
            ),
            asyncio.create_task(
                self._every(self.timing.due_sweep, self._jobs.queue_due), name="due"
            ),
        ]
        self.wake()

    async def stop(self) -> None:
        """Close every stream (their jobs follow their on-lost policy) and stop the loops."""
        self._accepting = False
        for session in list(self._live.values()):
            session.end()
        for session in list(self._live.values()):
            await self.close(session, "the dispatcher is shutting down")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self._sessions.retire_replica()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def live_sessions(self) -> int:
        return len(self._live)

    # --- sessions -----------------------------------------------------------------

    async def open(self, hello: RunnerHello) -> LiveSession:
        opened = await self._sessions.open(hello)
        for old_id in opened.replaced:
            old = self._live.pop(old_id, None)
            if old is not None:
                old.end()
        session = LiveSession(opened.session_id, hello, opened.resume_token)
        self._live[session.id] = session
        log.info(
            "runner %s connected (session %d, capacity %d)", hello.name, session.id, hello.capacity
        )
        self.wake()
        return session

    async def close(self, session: LiveSession, reason: str) -> None:
        session.end()
        if self._live.pop(session.id, None) is None:
            return
        moved = await self._sessions.close(session.id, reason)
        log.info(
            "runner %s disconnected (session %d): %s; %d job(s) moved on",
            session.name,
            session.id,
            reason,
            len(moved),
        )

    def cancel(self, order: CancelOrder) -> bool:
        """Deliver a cancel to the stream holding the execution, if it is on this replica."""
        session = self._live.get(order.session_id)
        if session is None or order.execution_id not in session.held:
            return False
        session.send(order)
        return True

    # --- runner reports -----------------------------------------------------------

    async def result(self, session: LiveSession, report: ResultReport) -> None:
        verdict = await self._executions.report_result(session.id, session.name, report)
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
        await self._executions.cancel_ack(session.id, session.name, execution_id)
        self._release(session, execution_id)

    async def heartbeat(
        self, session: LiveSession, progress: list[tuple[int, str | None, int | None]]
    ) -> None:
        await self._executions.heartbeat(session.id, progress)

    def _release(self, session: LiveSession, execution_id: int) -> None:
        if execution_id in session.held:
            session.held.discard(execution_id)
            self.wake()

    def _refuse_unless(self, session: LiveSession, execution_id: int, verdict: Verdict) -> None:
        # A runner working on an execution that no longer speaks for its job must stop.
        if not verdict.applied:
            session.send(CancelOrder(session.id, execution_id, verdict.reason))
            self._release(session, execution_id)

    # --- the assigner -------------------------------------------------------------

    async def _assign_forever(self) -> None:
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
        if not sessions:
            return 0
        random.shuffle(sessions)  # no runner always gets the head of the queue
        demands = [
            Demand(s.id, s.name, s.hello.platform, s.hello.labels, s.free_slots) for s in sessions
        ]
        assignments = await self._jobs.claim(demands)
        for assignment in assignments:
            session = self._live.get(assignment.session_id)
            if session is None or session.closed:
                continue  # its close decides the job by its on-lost policy
            session.held.add(assignment.execution_id)
            session.send(assignment)
        return len(assignments)

    @staticmethod
    async def _every(interval: timedelta, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(interval.total_seconds())
            try:
                await work()
            except Exception:
                log.exception("periodic task %s failed", getattr(work, "__name__", work))
