"""Job changes as a stream that resumes from a cursor (Admin WatchJobs, SPEC §8).

The stream is the job event log read in id order: every change of a job writes one
event row in the transaction that makes it, so "every event after cursor C, in id
order" is every change after C. Two things make that harder than a query:

- On PostgreSQL ids are handed out when a row is inserted but seen when its transaction
  commits, so id 41 may become visible after id 42. A watcher that passed 42 would never
  see 41. So a watch stops at a missing id and waits for it to fill; an id that stays
  missing (its transaction rolled back, or retention deleted it) is passed once it has
  been missing for ``settle_seconds``, or at once when the event after it is older than
  any transaction could be (a replay of history does not stall at every old gap).
- Wake-ups: commits on this replica fire ``ctx.changes``; a short poll is the backstop
  for commits made by other replicas.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import Connection

from dispatcher.domain.errors import InvalidInput
from dispatcher.domain.model import Job, JobEvent
from dispatcher.domain.states import JobState
from dispatcher.lifecycle.context import Context
from dispatcher.store import events as event_store
from dispatcher.store import jobs as job_store

# Events read per query.
BATCH = 500
# How long a watcher that is caught up sleeps unless this replica says "changed".
POLL_SECONDS = 1.0
# How soon a watcher stopped at a missing id looks again.
GAP_RECHECK_SECONDS = 0.1
# How long a missing id may stay missing before it is taken as never coming. Longer
# than any dispatcher transaction takes from inserting an event to committing it.
SETTLE_SECONDS = 5.0
# An event stamped this long ago: no transaction that started before it is still open,
# so the ids missing before it will never come.
HISTORY_HORIZON = timedelta(minutes=1)


@dataclass(frozen=True)
class WatchFilter:
    """Which changes a watcher wants; empty fields do not filter. ``states`` looks at the
    state an event moved its job into, so a replay gives the same answer as live."""

    states: frozenset[JobState] = frozenset()
    queue: str = ""
    platform: str = ""
    labels: frozenset[str] = frozenset()

    def wants_event(self, event: JobEvent) -> bool:
        return not self.states or event.to_state in self.states

    def wants_job(self, job: Job) -> bool:
        spec = job.spec
        return (
            (not self.queue or spec.queue == self.queue)
            and (not self.platform or spec.platform == self.platform)
            and self.labels <= spec.labels
        )


@dataclass(frozen=True)
class Change:
    """One message of a watch. Without an event it only says how far the watch got."""

    cursor: int
    event: JobEvent | None = None
    job: Job | None = None


class Gaps:
    """Which missing event ids a watcher still waits for, and since when (monotonic)."""

    def __init__(self, settle_seconds: float) -> None:
        self._settle = settle_seconds
        self._first_seen: dict[int, float] = {}

    def settled_prefix(
        self, cursor: int, events: Sequence[JobEvent], now: datetime, clock: float
    ) -> list[JobEvent]:
        """The events after ``cursor`` that may be delivered now: up to the first missing
        id that may still come."""
        out: list[JobEvent] = []
        expected = cursor + 1
        for event in events:
            if event.id != expected:
                first_seen = self._first_seen.setdefault(expected, clock)
                historic = event.at <= now - HISTORY_HORIZON
                if not historic and clock - first_seen < self._settle:
                    break
            out.append(event)
            expected = event.id + 1
        for missing in [m for m in self._first_seen if m < expected]:
            del self._first_seen[missing]
        return out


@dataclass(frozen=True)
class _Read:
    events: list[JobEvent]
    jobs: dict[int, Job]
    now: datetime


class JobWatch:
    def __init__(
        self,
        ctx: Context,
        *,
        settle_seconds: float = SETTLE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        batch: int = BATCH,
    ) -> None:
        self._ctx = ctx
        self._settle = settle_seconds
        self._poll = poll_seconds
        self._batch = batch

    async def start(self, after_cursor: int | None) -> int:
        """Where a watch asked to start after ``after_cursor`` begins (None: now)."""
        if after_cursor is not None and after_cursor < 0:
            raise InvalidInput(
                f"after_cursor must be a cursor this server sent (0 or more), not {after_cursor}"
            )
        newest = await self._ctx.db.run(event_store.newest_event_id)
        if after_cursor is None:
            return newest
        if after_cursor > newest:
            raise InvalidInput(
                f"after_cursor {after_cursor} is ahead of the newest event ({newest}): "
                "use a cursor this server sent, or leave it unset to start from now"
            )
        return after_cursor

    async def changes(self, flt: WatchFilter, after_cursor: int | None) -> AsyncIterator[Change]:
        """The starting point, then every wanted change after it, forever."""
        cursor = await self.start(after_cursor)
        yield Change(cursor)
        reported = cursor
        gaps = Gaps(self._settle)
        loop = asyncio.get_running_loop()
        while True:
            read = await self._ctx.db.run(partial(self._read, cursor=cursor, flt=flt))
            ready = gaps.settled_prefix(cursor, read.events, read.now, loop.time())
            for event in ready:
                cursor = event.id
                job = read.jobs.get(event.job_id)
                if job is not None and flt.wants_event(event) and flt.wants_job(job):
                    reported = cursor
                    yield Change(cursor, event, job)
            blocked = len(ready) < len(read.events)
            if len(read.events) == self._batch and not blocked:
                continue  # more to read at once
            if cursor != reported:
                # Caught up past changes the filter left out: say so, so that a resume
                # does not read them again.
                reported = cursor
                yield Change(cursor)
            await self._ctx.changes.wait(GAP_RECHECK_SECONDS if blocked else self._poll)

    def _read(self, conn: Connection, *, cursor: int, flt: WatchFilter) -> _Read:
        events = event_store.events_after(conn, cursor, self._batch)
        wanted = {e.job_id for e in events if flt.wants_event(e)}
        jobs = job_store.get_jobs(conn, wanted) if wanted else {}
        return _Read(events, jobs, self._ctx.clock.now())
