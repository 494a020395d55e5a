"""Group commit: many small fenced writes (results, heartbeats, accepts) from many
streams share one transaction, so throughput is bounded by commits per second times the
batch size rather than by commits per second alone.

Work comes in two shapes: a function of the connection, run in turn; or an item of a
:class:`Batcher`, whose consecutive items in a batch are handed to it together, so it
can read and write them with a statement per batch instead of per item."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection

from dispatcher.store import events as event_store
from dispatcher.store.database import Database

T = TypeVar("T")
log = logging.getLogger(__name__)

Work = Callable[[Connection], Any]


class Batcher(Protocol):
    def run_batch(self, conn: Connection, items: Sequence[Any]) -> list[Any]:
        """Apply ``items`` in order in the caller's transaction; one result per item.
        Expected refusals are results, not exceptions."""
        ...


@dataclass(frozen=True)
class _Item:
    batcher: Batcher
    item: Any

    def __call__(self, conn: Connection) -> Any:
        return self.batcher.run_batch(conn, [self.item])[0]


class GroupCommit:
    """Runs submitted work in shared transactions, in submission order.

    Work must be safe to run inside a shared transaction: fenced writes that return a
    verdict instead of raising for expected refusals. If a batch raises, it is rolled
    back and each item is retried in a transaction of its own, so one bad item fails
    only its own caller.
    """

    def __init__(self, db: Database, max_batch: int = 256) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[Work, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(self, work: Callable[[Connection], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((work, future))
        return await future

    async def submit_item(self, batcher: Batcher, item: Any) -> Any:
        """Apply ``item`` with the other items of ``batcher`` in the next batch."""
        return await self.submit(_Item(batcher, item))

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._db.run(partial(_run_all, [w for w, _ in batch]))
            except Exception:
                log.warning("group commit of %d items failed; retrying one by one", len(batch))
                for work, future in batch:
                    await self._run_alone(work, future)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def _run_alone(self, work: Work, future: asyncio.Future[Any]) -> None:
        try:
            result = await self._db.run(work)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(result)


def _run_all(works: Sequence[Work], conn: Connection) -> list[Any]:
    results: list[Any] = []
    with event_store.buffered_events(conn):
        start = 0
        while start < len(works):
            work = works[start]
            if not isinstance(work, _Item):
                results.append(work(conn))
                start += 1
                continue
            end = start + 1
            while (
                end < len(works)
                and isinstance(works[end], _Item)
                and works[end].batcher is work.batcher  # type: ignore[attr-defined]
            ):
                end += 1
            items = [w.item for w in works[start:end]]  # type: ignore[attr-defined]
            results.extend(work.batcher.run_batch(conn, items))
            start = end
    return results
