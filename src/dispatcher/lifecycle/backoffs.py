"""(subject, process) back-offs as operators see them: list and clear (SPEC §8)."""

from __future__ import annotations

from sqlalchemy import Connection

from dispatcher.domain.errors import InvalidInput, NotFound
from dispatcher.domain.model import Backoff
from dispatcher.lifecycle.context import Context
from dispatcher.store import backoffs as store


class Backoffs:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def active(self) -> list[Backoff]:
        now = self._ctx.clock.now()
        return await self._ctx.db.run(lambda conn: store.list_backoffs(conn, now))

    async def clear(self, subject: str, process: str) -> None:
        """End a back-off now; the jobs it held become ready at once."""
        if not subject:
            raise InvalidInput("subject is required")

        def work(conn: Connection) -> None:
            if not store.clear_backoff(conn, subject, process):
                raise NotFound(f"no back-off on subject {subject!r}, process {process!r}")

        await self._ctx.db.run(work)
        self._ctx.wake_due()
