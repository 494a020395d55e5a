"""The database clock: deadlines shared by replicas follow the database's time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dispatcher.store.clock import DatabaseClock, database_now
from dispatcher.store.database import Database


def test_database_now_is_aware_utc_and_close_to_ours(db: Database) -> None:
    with db.transaction() as conn:
        remote = database_now(conn)
    assert remote.tzinfo is UTC
    assert abs(remote - datetime.now(UTC)) < timedelta(seconds=5)


def test_the_clock_applies_the_measured_offset(db: Database) -> None:
    clock = DatabaseClock(db)
    offset = clock.measure()
    assert clock.offset == offset
    assert abs(offset) < timedelta(seconds=5)  # same machine
    assert abs(clock.now() - (datetime.now(UTC) + offset)) < timedelta(seconds=1)
