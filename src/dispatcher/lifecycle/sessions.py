"""Runner sessions and replica liveness: opening and closing streams, and deciding the
jobs of streams that are gone (closed, replaced, or on a replica whose lease ran out)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Connection

from dispatcher import __version__
from dispatcher.domain.model import Runner, RunnerHello, RunnerState
from dispatcher.domain.states import JobState
from dispatcher.domain.validation import check_hello
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.transitions import lose_execution
from dispatcher.store import jobs as job_store
from dispatcher.store import runners as store


@dataclass(frozen=True)
class OpenedSession:
    session_id: int
    resume_token: str
    # Earlier sessions of the same runner name, closed and fenced by this one.
    replaced: tuple[int, ...]


class Sessions:
    def __init__(self, ctx: Context, *, lease: timedelta) -> None:
        self._ctx = ctx
        self._lease = lease

    async def open(self, hello: RunnerHello) -> OpenedSession:
        check_hello(hello, self._ctx.limits)
        resume_token = secrets.token_urlsafe(32)
        token_hash = hashlib.sha256(resume_token.encode()).hexdigest()

        def work(conn: Connection) -> OpenedSession:
            now = self._ctx.clock.now()
            replaced = store.open_sessions_of_runner(conn, hello.name)
            for old in replaced:
                self._close(conn, old, "replaced by a new session of the same runner")
            previous = store.runner_state(conn, hello.name)
            state = RunnerState.DRAINING if previous is RunnerState.DRAINING else RunnerState.ONLINE
            store.upsert_runner(conn, hello, state, now)
            session_id = store.open_session(conn, hello.name, self._ctx.replica_id, token_hash, now)
            return OpenedSession(session_id, resume_token, tuple(replaced))

        opened = await self._ctx.db.run(work)
        if opened.replaced:
            self._ctx.wake()
        return opened

    async def close(self, session_id: int, reason: str) -> list[tuple[int, JobState]]:
        """Close a session; its unfinished executions are lost and their jobs follow their
        on-lost policy. Returns (job id, new state) for each job moved."""
        moved = await self._ctx.db.run(lambda conn: self._close(conn, session_id, reason))
        if any(state is JobState.QUEUED for _, state in moved):
            self._ctx.wake()
        return moved

    def _close(self, conn: Connection, session_id: int, reason: str) -> list[tuple[int, JobState]]:
        now = self._ctx.clock.now()
        if not store.close_session(conn, session_id, reason, now):
            return []
        runner = store.session_runner(conn, session_id) or "?"
        moved = []
        for execution_id, job_id in job_store.open_executions_of_session(conn, session_id):
            state = lose_execution(
                conn,
                execution_id,
                job_id,
                now,
                actor="dispatcher",
                cause=f"runner {runner} lost: {reason}",
            )
            if state is not None:
                moved.append((job_id, state))
        if not store.open_sessions_of_runner(conn, runner):
            store.set_runner_state(conn, runner, RunnerState.OFFLINE, now)
        return moved

    async def list_runners(self) -> list[Runner]:
        return await self._ctx.db.run(store.list_runners)

    # --- replicas -----------------------------------------------------------------

    async def register_replica(self) -> None:
        def work(conn: Connection) -> None:
            now = self._ctx.clock.now()
            store.register_replica(conn, self._ctx.replica_id, __version__, now, now + self._lease)

        await self._ctx.db.run(work)

    async def renew_lease(self) -> None:
        def work(conn: Connection) -> None:
            now = self._ctx.clock.now()
            if not store.renew_replica(conn, self._ctx.replica_id, now + self._lease):
                store.register_replica(
                    conn, self._ctx.replica_id, __version__, now, now + self._lease
                )

        await self._ctx.db.run(work)

    async def retire_replica(self) -> None:
        await self._ctx.db.run(lambda conn: store.remove_replica(conn, self._ctx.replica_id))

    async def live_replicas(self) -> int:
        return await self._ctx.db.run(
            lambda conn: store.live_replica_count(conn, self._ctx.clock.now())
        )

    async def recover_orphans(self) -> int:
        """Close the open sessions of replicas that are gone (a crash, a kill -9): their
        jobs follow their on-lost policy. Returns how many sessions were closed."""

        def work(conn: Connection) -> int:
            now = self._ctx.clock.now()
            orphans = store.orphaned_open_sessions(conn, now)
            for session_id in orphans:
                self._close(conn, session_id, "its dispatcher replica is gone")
            return len(orphans)

        closed = await self._ctx.db.run(work)
        if closed:
            self._ctx.wake()
        return closed
