"""When waiting jobs next become ready by time alone (a due time, a max_wait, the end of
a back-off), so that the due loop sleeps until then instead of looking every second.
What makes jobs ready without time passing (a job ending, a back-off cleared, a flavor
added) wakes the loop itself."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Connection

from dispatcher.lifecycle.context import Context
from dispatcher.store import horizons as store


class DueTimes:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def next_in(self) -> timedelta | None:
        """How long from now until the next such moment; None when none is known."""

        def read(conn: Connection) -> timedelta | None:
            now = self._ctx.clock.now()
            due = store.next_due_at(conn, now)
            return None if due is None else due - now

        return await self._ctx.db.run(read)
