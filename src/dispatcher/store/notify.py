"""Notifications between the replicas sharing one PostgreSQL database (SPEC §9).

Sending: :func:`publish` notes a payload on the transaction that made a change;
``Database`` sends what was noted with ``pg_notify`` just before that transaction
commits (:func:`send_pending`), so PostgreSQL delivers it at the commit, and never for
a change that was rolled back. A payload noted twice in one transaction is sent once:
a thousand jobs queued in one transaction make one notification.

Receiving: a :class:`Listener` holds one dedicated connection with ``LISTEN``, read on
the event loop (``add_reader`` + ``poll``). When the connection drops it reconnects
with growing pauses, and says so (``on_connect``): notifications sent meanwhile are
lost, so whoever listens should then look at the database once.

On SQLite both are no-ops: one process. What a transaction wants woken in this process
too (:func:`wake_here`, :func:`due_here`) ``Database`` tells its wake (or due) listeners
once the transaction has committed, on every database: the change is what matters, not
the code path that made it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import psycopg2
from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

CHANNEL = "dispatcher"
# PostgreSQL refuses payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7900

_PENDING = "dispatcher.notify_pending"
_SEND = text(
    "SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"
)


def publish(conn: Connection, payload: str) -> None:
    """Send ``payload`` to every replica when the caller's transaction commits."""
    if conn.dialect.name != "postgresql":
        return
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"a notification payload must stay under {MAX_PAYLOAD_BYTES} bytes")
    pending: dict[str, None] | None = conn.info.get(_PENDING)
    if pending is None:
        pending = conn.info[_PENDING] = {}
    pending[payload] = None  # a dict keeps the order they were noted in


_WAKE_HERE = "dispatcher.wake_here"


def wake_here(conn: Connection) -> None:
    """Wake this process's assigners when the caller's transaction commits."""
    conn.info[_WAKE_HERE] = True


def take_wake_here(conn: Connection) -> bool:
    """Whether :func:`wake_here` was called in the transaction now ending (forgotten)."""
    return bool(conn.info.pop(_WAKE_HERE, False))


_DUE_HERE = "dispatcher.due_here"


def due_here(conn: Connection) -> None:
    """Tell this process's due loop, when the caller's transaction commits, that waiting
    jobs may have become ready or got a new due time (a job ended or waits again)."""
    conn.info[_DUE_HERE] = True


def take_due_here(conn: Connection) -> bool:
    """Whether :func:`due_here` was called in the transaction now ending (forgotten)."""
    return bool(conn.info.pop(_DUE_HERE, False))


def send_pending(conn: Connection) -> None:
    """Send, still inside the transaction, what :func:`publish` noted in it."""
    pending: dict[str, None] | None = conn.info.pop(_PENDING, None)
    if pending:
        conn.execute(_SEND, {"channel": CHANNEL, "payloads": list(pending)})


def discard_pending(conn: Connection) -> None:
    """Forget what was noted (the transaction ended without sending it)."""
    conn.info.pop(_PENDING, None)


class Listener:
    """One replica's ``LISTEN`` connection, read on the running event loop.

    ``on_payload`` gets each payload, in commit order; ``on_connect`` is called each
    time the connection is (re)established and listening, the first time included.
    Both run on the event loop and must return at once.
    """

    def __init__(
        self,
        engine: Engine,
        on_payload: Callable[[str], None],
        on_connect: Callable[[], None],
        *,
        channel: str = CHANNEL,
        retry_initial: float = 0.1,
        retry_max: float = 5.0,
    ) -> None:
        self._engine = engine
        self._on_payload = on_payload
        self._on_connect = on_connect
        self._channel = channel
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._conn: Any = None
        self._fd: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._stopping = False
        # How many times a connection was established (tests wait for a reconnect).
        self.connections = 0

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the current connection (None while disconnected)."""
        conn = self._conn
        return None if conn is None else int(conn.get_backend_pid())

    async def start(self) -> None:
        """Connect and listen (retrying until it works), then keep the connection up."""
        await self._connect_until_up()
        self._task = asyncio.create_task(self._keep_up(), name="notify-listener")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop()

    async def _keep_up(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            self._drop()
            await self._connect_until_up()

    async def _connect_until_up(self) -> None:
        pause = self._retry_initial
        while True:
            try:
                conn = await asyncio.to_thread(self._connect)
            except Exception as exc:  # the database is down or refuses us: try again
                log.warning("cannot listen for notifications (%s); retrying in %.1f s", exc, pause)
                await asyncio.sleep(pause)
                pause = min(self._retry_max, pause * 2)
                continue
            self._conn = conn
            self._fd = conn.fileno()
            self.connections += 1
            asyncio.get_running_loop().add_reader(self._fd, self._readable)
            if self.connections > 1:
                log.info("listening for notifications again; looking at the database once")
            self._on_connect()
            # Anything that arrived between LISTEN and add_reader is in the buffer already.
            self._readable()
            return

    def _connect(self) -> Any:
        """A new autocommit connection listening on the channel (blocking)."""
        # Its own psycopg2 connection, whatever driver the engine uses: add_reader and
        # poll() read notifications without a thread.
        url = self._engine.url
        params: dict[str, Any] = url.translate_connect_args(username="user", database="dbname")
        params.update(url.query)  # sslmode, application_name, ...
        # TCP keepalives find a dead server or network while nothing is being said.
        options = {
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "connect_timeout": 5,
            **params,
        }
        conn = psycopg2.connect(**options)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'LISTEN "{self._channel}"')
        except Exception:
            conn.close()
            raise
        return conn

    def _readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            conn.poll()
        except Exception as exc:
            if not self._stopping:
                log.warning("the notification connection failed: %s; reconnecting", exc)
            self._lost.set()
            self._remove_reader()
            return
        while conn.notifies:
            notification = conn.notifies.pop(0)
            try:
                self._on_payload(notification.payload)
            except Exception:
                log.exception("a notification could not be handled: %r", notification.payload)

    def _remove_reader(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)

    def _drop(self) -> None:
        self._remove_reader()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
