"""The flavors admission reads for every submitted job, kept in memory: flavors change
a few times a day, jobs arrive hundreds of times a second.

A change forgets them on every replica: in this process after its commit, in the others
through a FlavorsChanged notification (lifecycle/messages.py), and whenever the
notification connection comes back (messages may have been lost meanwhile). As a last
backstop nothing is kept longer than ``ttl``. A read that overlapped a change is used
once but not kept, so a change is never hidden behind an older read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from sqlalchemy import Connection

from dispatcher.domain.model import Flavor
from dispatcher.store import flavors as store

ByPlatform = dict[str, list[tuple[int, Flavor]]]

DEFAULT_TTL_SECONDS = 5.0


class KnownFlavors:
    def __init__(
        self, ttl: float = DEFAULT_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        # Bumped by every forget: a read that started before one is not kept.
        self._generation = 0
        self._kept: tuple[int, float, ByPlatform] | None = None

    def forget(self) -> None:
        """Flavors changed (here or on another replica): read them again."""
        self._generation += 1
        self._kept = None

    def of_platforms(self, conn: Connection, platforms: Collection[str]) -> ByPlatform:
        """Every flavor (enabled or not) of each platform, for admission of a batch."""
        kept = self._kept
        now = self._clock()
        if kept is not None and kept[0] == self._generation and now - kept[1] < self._ttl:
            every = kept[2]
        else:
            generation = self._generation
            every = {}
            for flavor_id, flavor in store.list_flavors(conn):
                every.setdefault(flavor.platform, []).append((flavor_id, flavor))
            if generation == self._generation:
                self._kept = (generation, now, every)
        return {platform: list(every.get(platform, ())) for platform in platforms}
