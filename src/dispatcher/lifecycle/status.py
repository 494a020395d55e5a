"""Read-only use cases for the status page and the metrics: what operators look at.
Nothing here changes a job, a runner or a session."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection

from dispatcher.domain.model import JobEvent, Pressure, Runner, RunnerState
from dispatcher.domain.states import JobState
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.flavors import read_pressures
from dispatcher.store import runners as runner_store
from dispatcher.store import stats

MAX_RECENT_EVENTS = 500


@dataclass(frozen=True)
class Counts:
    """Jobs and runners by state, read in one transaction."""

    jobs: dict[JobState, int]
    runners: dict[RunnerState, int]
    pressures: tuple[Pressure, ...] = ()


@dataclass(frozen=True)
class HeldJob:
    job_id: int
    execution_id: int
    started_at: datetime
    last_heartbeat_at: datetime | None


@dataclass(frozen=True)
class RunnerView:
    """A runner as an operator sees it: what it is, what it holds, when it last spoke."""

    runner: Runner
    held: tuple[HeldJob, ...] = ()
    last_heartbeat_at: datetime | None = None


@dataclass(frozen=True)
class Overview:
    counts: Counts
    runners: tuple[RunnerView, ...]
    events: tuple[JobEvent, ...] = field(default=())


class Status:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def counts(self) -> Counts:
        return await self._ctx.db.run(_counts)

    async def overview(self, *, events: int = 50) -> Overview:
        """Counts, every runner with what it holds, and the newest ``events`` events."""
        limit = max(0, min(events, MAX_RECENT_EVENTS))

        def read(conn: Connection) -> Overview:
            held: dict[str, list[HeldJob]] = {}
            for e in stats.held_executions(conn):
                held.setdefault(e.runner, []).append(
                    HeldJob(e.job_id, e.execution_id, e.started_at, e.last_heartbeat_at)
                )
            beats = stats.last_heartbeats(conn)
            views = tuple(
                RunnerView(r, tuple(held.get(r.name, ())), beats.get(r.name))
                for r in runner_store.list_runners(conn)
            )
            return Overview(_counts(conn), views, tuple(stats.recent_events(conn, limit)))

        return await self._ctx.db.run(read)

    async def version(self) -> int:
        """A number that grows whenever any job changes (the newest event's id)."""
        return await self._ctx.db.run(stats.latest_event_id)


def _counts(conn: Connection) -> Counts:
    return Counts(
        stats.job_counts_by_state(conn),
        stats.runner_counts_by_state(conn),
        tuple(read_pressures(conn)),
    )
