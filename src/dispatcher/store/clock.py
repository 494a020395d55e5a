"""The database's clock, for deadlines that several replicas must agree on.

Each replica's own clock may drift; the database's is the one they share. Asking the
database on every call would cost a round trip, so this clock measures its offset from
the local clock and re-measures it now and then.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, text

from dispatcher.store.database import Database

_NOW_SQL = {
    "postgresql": "SELECT clock_timestamp() AT TIME ZONE 'UTC'",
    "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
}


def database_now(conn: Connection) -> datetime:
    value = conn.execute(text(_NOW_SQL[conn.dialect.name])).scalar_one()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC)


class DatabaseClock:
    """Local time corrected by the measured offset to the database's clock."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._offset = timedelta(0)

    def measure(self) -> timedelta:
        """Measure the offset now (a blocking round trip); returns it."""
        before = datetime.now(UTC)
        with self._db.engine.connect() as conn:
            remote = database_now(conn)
        after = datetime.now(UTC)
        offset = remote - (before + (after - before) / 2)
        with self._lock:
            self._offset = offset
        return offset

    @property
    def offset(self) -> timedelta:
        return self._offset

    def now(self) -> datetime:
        """Never blocks: uses the last measured offset (the app re-measures on a timer)."""
        return datetime.now(UTC) + self._offset
