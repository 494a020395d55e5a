"""Operators' view of the machines: evicting a runner, and the replicas sharing the
database (SPEC §8 runners evict, server info)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from dispatcher.domain.errors import InvalidInput, NotFound
from dispatcher.domain.model import Job, Replica, Runner, RunnerState
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.messages import SessionsEnded, announce
from dispatcher.lifecycle.sessions import Sessions
from dispatcher.store import jobs as job_store
from dispatcher.store import replicas as replica_store
from dispatcher.store import runners as runner_store


@dataclass(frozen=True)
class Eviction:
    runner: Runner
    # The sessions closed; their streams end on whichever replica holds them.
    session_ids: tuple[int, ...]
    # The jobs it held, as they are after following their on-lost policy.
    jobs: tuple[Job, ...]

    @property
    def closed_sessions(self) -> int:
        return len(self.session_ids)


class Fleet:
    def __init__(self, ctx: Context, sessions: Sessions) -> None:
        self._ctx = ctx
        self._sessions = sessions

    @property
    def max_batch_size(self) -> int:
        return self._ctx.limits.max_batch_size

    async def evict(self, name: str, *, actor: str, reason: str) -> Eviction:
        """Close every open session of runner ``name`` now, as a stream that died and
        will not re-attach: its executions are lost and their jobs follow their on-lost
        policy. The runner is OFFLINE (a drain is forgotten) until it connects again.
        Every replica hears of it: the one holding a stream of these sessions ends it."""
        if not name:
            raise InvalidInput("name is required: the runner's name (see ListRunners)")
        cause = f"evicted by {actor}" + (f": {reason}" if reason else "")

        def work(conn: Connection) -> Eviction:
            if runner_store.runner_state(conn, name) is None:
                raise NotFound(f"runner {name!r} is not known to this dispatcher")
            sessions = runner_store.open_sessions_of_runner(conn, name)
            moved = [
                job_id
                for session_id in sessions
                for job_id, _ in self._sessions.close_in(conn, session_id, cause)
            ]
            runner_store.set_runner_state(conn, name, RunnerState.OFFLINE, self._ctx.clock.now())
            if sessions:
                announce(conn, SessionsEnded(tuple(sessions), cause))
            [runner] = runner_store.list_runners(conn, name)
            jobs = job_store.get_jobs(conn, moved)
            return Eviction(runner, tuple(sessions), tuple(jobs[j] for j in moved if j in jobs))

        eviction = await self._ctx.db.run(work)
        if eviction.closed_sessions:
            self._ctx.wake()
        return eviction

    async def replicas(self) -> list[Replica]:
        """The replicas whose lease has not run out."""
        return await self._ctx.db.run(
            lambda conn: replica_store.live_replicas(conn, self._ctx.clock.now())
        )
