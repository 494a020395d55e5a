"""The job watch's ordering rule: an id that is missing may still be committed (on
PostgreSQL ids are handed out at insert, seen at commit), so a watch waits for it
before passing it; one that stays missing is passed after the settle time."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import insert

from dispatcher.domain.model import JobEvent, JobSpec
from dispatcher.lifecycle.watch import HISTORY_HORIZON, Gaps, JobWatch, WatchFilter
from dispatcher.store.database import Database
from dispatcher.store.tables import job_events
from tests.support.services import services

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def event(event_id: int, at: datetime = NOW) -> JobEvent:
    return JobEvent(event_id, 1, None, "k", None, None, "t", "", at)


def test_a_watch_stops_at_a_missing_id_until_it_settles() -> None:
    gaps = Gaps(settle_seconds=5.0)
    batch = [event(1), event(3), event(4)]
    assert [e.id for e in gaps.settled_prefix(0, batch, NOW, clock=100.0)] == [1]
    assert [e.id for e in gaps.settled_prefix(1, batch[1:], NOW, clock=104.0)] == []
    # Still missing 5 s after it was first seen: it is never coming.
    assert [e.id for e in gaps.settled_prefix(1, batch[1:], NOW, clock=105.0)] == [3, 4]


def test_a_missing_id_before_an_old_event_is_passed_at_once() -> None:
    gaps = Gaps(settle_seconds=5.0)
    old = NOW - HISTORY_HORIZON - timedelta(seconds=1)
    batch = [event(3, old), event(9, old), event(10)]
    assert [e.id for e in gaps.settled_prefix(0, batch, NOW, clock=0.0)] == [3, 9, 10]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_an_earlier_id_committed_later_comes_first(db: Database) -> None:
    async with services(db) as s:
        [(job, _)] = await s.jobs.submit([JobSpec(platform="p", command=("true",))], actor="t")
        watch = JobWatch(s.ctx, settle_seconds=30.0, poll_seconds=0.05)
        stream = watch.changes(WatchFilter(), None)
        start = await anext(stream)
        with db.engine.connect() as slow:
            # A transaction takes an event id and has not committed yet...
            transaction = slow.begin()
            slow.execute(
                insert(job_events).values(
                    job_id=job.id, kind="slow", actor="t", cause="", at=s.clock.now()
                )
            )
            # ...while a later one commits (another job: the slow one holds a key
            # share lock on the first).
            await s.jobs.submit([JobSpec(platform="p", command=("true",))], actor="t")
            following = asyncio.ensure_future(anext(stream))
            held, _ = await asyncio.wait({following}, timeout=0.5)
            assert not held, "a later event was sent before an earlier id was settled"
            transaction.commit()
        first = await asyncio.wait_for(following, 5)
        second = await asyncio.wait_for(anext(stream), 5)
        assert first.event is not None
        assert second.event is not None
        assert [first.event.kind, second.event.kind] == ["slow", "submitted"]
        assert start.cursor < first.cursor < second.cursor
        await stream.aclose()
