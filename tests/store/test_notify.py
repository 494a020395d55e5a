"""Notifications between replicas (store/notify.py) on a real PostgreSQL: sent at commit
only, once per payload and transaction, and heard again after the listening connection
is killed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from sqlalchemy import Connection, make_url, text

from dispatcher.store import notify
from dispatcher.store.database import Database
from tests.support.eventually import eventually

POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@dataclass
class Heard:
    payloads: list[str] = field(default_factory=list)
    connects: int = 0

    def payload(self, payload: str) -> None:
        self.payloads.append(payload)

    def connected(self) -> None:
        self.connects += 1


@pytest.fixture
async def heard(db: Database) -> AsyncIterator[tuple[Heard, notify.Listener]]:
    got = Heard()
    listener = notify.Listener(db.engine, got.payload, got.connected, retry_initial=0.05)
    await listener.start()
    try:
        yield got, listener
    finally:
        await listener.stop()


def publishing(*payloads: str, fail: bool = False) -> Callable[[Connection], None]:
    def work(conn: Connection) -> None:
        for payload in payloads:
            notify.publish(conn, payload)
        if fail:
            raise RuntimeError("rolled back on purpose")

    return work


@POSTGRESQL
async def test_a_rolled_back_transaction_notifies_nobody(
    db: Database, heard: tuple[Heard, notify.Listener]
) -> None:
    got, _ = heard
    with pytest.raises(RuntimeError, match="on purpose"):
        await db.run(publishing("rolled-back", fail=True))
    await db.run(publishing("committed"))
    # Delivered in commit order: had the first been sent, it would be here already.
    await eventually(lambda: "committed" in got.payloads)
    assert got.payloads == ["committed"]


@POSTGRESQL
async def test_one_notification_per_payload_and_transaction(
    db: Database, heard: tuple[Heard, notify.Listener]
) -> None:
    got, _ = heard
    await db.run(publishing(*["wake"] * 1000, "other", "wake"))
    await db.run(publishing("marker"))
    await eventually(lambda: "marker" in got.payloads)
    assert got.payloads == ["wake", "other", "marker"]


@POSTGRESQL
async def test_the_listener_reconnects_after_its_connection_is_killed(
    db: Database, heard: tuple[Heard, notify.Listener]
) -> None:
    got, listener = heard
    assert got.connects == 1
    first = listener.backend_pid
    assert first is not None
    with db.engine.begin() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar()
    # Told again (so that the replica looks at the database: it may have missed some).
    await eventually(lambda: got.connects == 2, timeout=10)
    assert listener.backend_pid not in (None, first)
    await db.run(publishing("after the reconnect"))
    await eventually(lambda: "after the reconnect" in got.payloads)


def test_sqlite_sends_nothing() -> None:
    sqlite = Database("sqlite://")
    try:
        with sqlite.transaction() as conn:
            notify.publish(conn, "ignored")
            assert notify._PENDING not in conn.info
    finally:
        sqlite.close()


@POSTGRESQL
async def test_the_listener_hears_whatever_driver_the_engine_uses(database_url: str) -> None:
    """The listening connection is psycopg2's own, read without a thread; the engine may
    use psycopg (3)."""
    url = make_url(database_url).set(drivername="postgresql+psycopg")
    db = Database(url.render_as_string(hide_password=False))
    got = Heard()
    listener = notify.Listener(db.engine, got.payload, got.connected)
    await listener.start()
    try:
        with db.transaction() as conn:
            notify.publish(conn, "hello")
        await eventually(lambda: got.payloads == ["hello"])
    finally:
        await listener.stop()
        db.close()
