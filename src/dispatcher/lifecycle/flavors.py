"""Flavors and pressure (SPEC §5.1, §5.9): what autoscalers read to decide which build
machines to start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dispatcher.domain.errors import Conflict, InvalidInput, NotFound
from dispatcher.domain.model import Flavor, Pressure
from dispatcher.domain.rules import choose_flavor
from dispatcher.domain.states import HOLD, JobState
from dispatcher.domain.validation import check_flavor
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.messages import FLAVORS_CHANGED, announce
from dispatcher.lifecycle.transitions import apply
from dispatcher.store import flavors as store
from dispatcher.store import jobs as job_store

# How often a pressure watcher re-reads when nothing in this process said "changed":
# the backstop for changes made by other replicas.
WATCH_POLL_SECONDS = 2.0


class Flavors:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def add(self, flavor: Flavor, *, actor: str) -> Flavor:
        """Add a flavor; waiting jobs of its platform that had no flavor and that it
        serves are assigned to it."""
        check_flavor(flavor, self._ctx.limits)

        def work(conn: Connection) -> Flavor:
            now = self._ctx.clock.now()
            if store.flavor_id(conn, flavor.name) is not None:
                raise Conflict(f"flavor {flavor.name!r} already exists")
            store.insert_flavor(conn, flavor, now)
            announce(conn, FLAVORS_CHANGED)
            if flavor.enabled:
                self._reassign(conn, flavor.platform, None, now, actor)
            return flavor

        try:
            added = await self._ctx.db.run(work)
        except IntegrityError:
            raise Conflict(f"flavor {flavor.name!r} already exists") from None
        self._changed()
        return added

    async def all(self) -> list[Flavor]:
        return [f for _, f in await self._ctx.db.run(store.list_flavors)]

    async def set_enabled(self, name: str, enabled: bool, *, actor: str) -> Flavor:
        """Enable a flavor (it takes waiting jobs that had none) or disable it (its
        waiting jobs go to another flavor that serves them, or wait with none)."""

        def work(conn: Connection) -> Flavor:
            now = self._ctx.clock.now()
            flavor_id = self._find(conn, name)
            store.set_enabled(conn, flavor_id, enabled)
            announce(conn, FLAVORS_CHANGED)
            [flavor] = [f for i, f in store.list_flavors(conn) if i == flavor_id]
            self._reassign(conn, flavor.platform, None if enabled else flavor_id, now, actor)
            return flavor

        flavor = await self._ctx.db.run(work)
        self._changed()
        return flavor

    async def delete(self, name: str, *, actor: str) -> None:
        def work(conn: Connection) -> None:
            now = self._ctx.clock.now()
            flavor_id = self._find(conn, name)
            [flavor] = [f for i, f in store.list_flavors(conn) if i == flavor_id]
            store.set_enabled(conn, flavor_id, False)
            self._reassign(conn, flavor.platform, flavor_id, now, actor)
            store.delete_flavor(conn, flavor_id)
            announce(conn, FLAVORS_CHANGED)

        await self._ctx.db.run(work)
        self._changed()

    def _changed(self) -> None:
        # Other replicas forget theirs when the notification arrives.
        self._ctx.known_flavors.forget()
        self._ctx.wake_due()

    def _find(self, conn: Connection, name: str) -> int:
        if not name:
            raise InvalidInput("name is required: the flavor's name")
        flavor_id = store.flavor_id(conn, name, for_update=True)
        if flavor_id is None:
            raise NotFound(f"flavor {name!r} does not exist")
        return flavor_id

    def _reassign(
        self, conn: Connection, platform: str, from_flavor: int | None, now: datetime, actor: str
    ) -> None:
        """Give the waiting jobs of ``platform`` assigned to ``from_flavor`` (None: to no
        flavor) the best enabled flavor that serves them. A QUEUED job left with none
        waits (NOTICED) until one is enabled or added."""
        candidates = [(i, f) for i, f in store.list_flavors(conn, platform) if f.enabled]
        ids = store.waiting_job_ids(conn, from_flavor, platform)
        by_choice: dict[int | None, list[int]] = {}
        held = []
        for job in job_store.get_jobs(conn, ids).values():
            chosen = choose_flavor(
                (f for _, f in candidates), platform, job.spec.labels, self._ctx.rng
            )
            chosen_id = next((i for i, f in candidates if chosen and f.name == chosen.name), None)
            by_choice.setdefault(chosen_id, []).append(job.id)
            if chosen_id is None and job.state is JobState.QUEUED:
                held.append(job)
        for chosen_id, job_ids in by_choice.items():
            if chosen_id != from_flavor:
                store.set_job_flavor(conn, job_ids, chosen_id)
        for job in held:
            apply(conn, job, HOLD, now, actor=actor, cause="no enabled flavor serves it")

    async def pressures(self) -> list[Pressure]:
        return await self._ctx.db.run(read_pressures)

    async def watch(self) -> AsyncIterator[list[Pressure]]:
        """The pressures now, then again each time one of them changes."""
        last: list[Pressure] | None = None
        while True:
            current = await self.pressures()
            if current != last:
                yield current
                last = current
            await self._ctx.changes.wait(WATCH_POLL_SECONDS)


def read_pressures(conn: Connection) -> list[Pressure]:
    """Every flavor's pressure, in the caller's transaction."""
    counts = store.unfinished_per_flavor(conn)
    return [
        Pressure(
            flavor=f.name,
            platform=f.platform,
            value=max(counts.get(i, 0), f.min_pressure),
            unfinished=counts.get(i, 0),
            enabled=f.enabled,
        )
        for i, f in store.list_flavors(conn)
    ]
