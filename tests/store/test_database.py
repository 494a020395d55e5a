"""The database handle on PostgreSQL: connections that died while pooled are not
handed out."""

from __future__ import annotations

import pytest
from sqlalchemy import Connection, text

from dispatcher.store import database
from dispatcher.store.database import Database


def _backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_a_pooled_connection_killed_while_idle_is_replaced(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "IDLE_PING_SECONDS", 0.0)
    db = Database(pg_url, workers=1)
    other = Database(pg_url, workers=1)
    try:
        first = db.run_sync(_backend_pid)
        other.run_sync(
            lambda conn: conn.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": first}
            ).scalar_one()
        )
        # The pooled connection is dead; the next transaction gets a live one.
        second = db.run_sync(_backend_pid)
        assert second != first
    finally:
        db.close()
        other.close()
