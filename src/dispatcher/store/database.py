"""The database handle: engine set-up per dialect, transactions, and a thread pool that
keeps blocking database work off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError

from dispatcher.domain.errors import Unavailable
from dispatcher.store import notify

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///dispatcher.db"


class Database:
    """One engine and one executor. SQLite gets a single worker thread: it has one writer
    anyway, and serialising in-process avoids busy waits. PostgreSQL gets a small pool."""

    def __init__(self, url: str = DEFAULT_URL, *, workers: int | None = None) -> None:
        self.url = make_url(url)
        self.kind = "sqlite" if self.url.get_backend_name() == "sqlite" else "postgresql"
        self.engine = _create_engine(url, self.kind)
        size = workers or (1 if self.kind == "sqlite" else 4)
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="db")
        # Told of every operation that failed as Unavailable (the metrics count them).
        # Called on a database thread; must return at once.
        self.error_listeners: list[Callable[[], None]] = []
        # Told after a transaction that asked to wake this process (notify.wake_here)
        # committed. Called on a database thread; must return at once.
        self.wake_listeners: list[Callable[[], None]] = []
        # Likewise after a transaction that asked to tell the due loop (notify.due_here).
        self.due_listeners: list[Callable[[], None]] = []

    @property
    def is_postgresql(self) -> bool:
        return self.kind == "postgresql"

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a transaction: committed when the block ends, rolled back on error.

        A database that cannot be reached (or is locked past the busy timeout) raises
        Unavailable, which clients see as UNAVAILABLE: worth a retry, unlike a bug."""
        try:
            with self._begin() as conn:
                yield conn
        except OperationalError as exc:
            raise self._unavailable(exc) from exc

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A transaction whose notifications (store/notify.py) are sent just before it
        commits, and forgotten when it does not; its wake-ups of this process come after
        the commit."""
        woke = due = False
        with self.engine.begin() as conn:
            try:
                yield conn
                notify.send_pending(conn)
            finally:
                notify.discard_pending(conn)
                woke = notify.take_wake_here(conn)
                due = notify.take_due_here(conn)
        if woke:
            for listener in self.wake_listeners:
                listener()
        if due:
            for listener in self.due_listeners:
                listener()

    def run_sync(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction; run it again when PostgreSQL aborted it as a
        deadlock victim or a serialization failure (nothing of it was committed)."""
        for attempt in range(1, RETRIES + 1):
            try:
                with self._begin() as conn:
                    return work(conn)
            except OperationalError as exc:
                if attempt < RETRIES and _retryable(exc):
                    log.info(
                        "transaction retried (attempt %d): %s",
                        attempt,
                        getattr(exc.orig, "pgcode", "?"),
                    )
                    continue
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    def _unavailable(self, exc: OperationalError) -> Unavailable:
        for listener in self.error_listeners:
            listener()
        return _unavailable(exc)

    async def run(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one transaction on a database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, work)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking function on a database thread (for work that owns its transactions)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()


RETRIES = 5
# A pooled connection unused for longer than this is pinged before it is handed out.
IDLE_PING_SECONDS = 5.0


def _ping_idle_connections(engine: Engine) -> None:
    """Hand out only live connections, like ``pool_pre_ping``, but ping only those that
    sat idle: a busy dispatcher would otherwise pay a round trip per transaction. A
    connection that dies while in use fails its transaction, which reports UNAVAILABLE."""

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_SECONDS:
            return
        try:
            with contextlib.closing(dbapi_connection.cursor()) as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            # The pool discards this connection and checks out another.
            raise DisconnectionError("idle connection is gone") from exc


# PostgreSQL's deadlock_detected and serialization_failure: the transaction was rolled
# back whole and may simply run again.
_RETRYABLE_PGCODES = frozenset({"40P01", "40001"})


def _retryable(exc: OperationalError) -> bool:
    return getattr(exc.orig, "pgcode", None) in _RETRYABLE_PGCODES


def _unavailable(exc: OperationalError) -> Unavailable:
    incident = uuid.uuid4().hex[:12]
    log.error("database operation failed (incident %s)", incident, exc_info=exc)
    return Unavailable(f"the database is unavailable; try again (incident {incident})")


def _create_engine(url: str, kind: str) -> Engine:
    if kind == "postgresql":
        engine = create_engine(url, pool_size=8, max_overflow=4)
        _ping_idle_connections(engine)
        return engine
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    # pysqlite's own transaction handling starts transactions late and never for
    # SELECT; take control so every transaction is BEGIN IMMEDIATE: one writer at a
    # time, no upgrade deadlocks between a reader and a writer.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
