"""What every use case needs: the database, the clock, the limits, and a way to say
"jobs may be runnable now" to whoever assigns them."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from dispatcher.domain.clock import Clock
from dispatcher.domain.rules import SchedulingRules
from dispatcher.domain.validation import Limits
from dispatcher.lifecycle.batching import GroupCommit
from dispatcher.lifecycle.known_flavors import KnownFlavors
from dispatcher.store.database import Database


@dataclass(frozen=True)
class Deadlines:
    """How long the dispatcher waits before it decides (SPEC §5.7, §5.8, §6)."""

    # A session without a heartbeat for this long is dead.
    heartbeat_timeout: timedelta = timedelta(seconds=30)
    # A session holding no executions is dead after this long without a message.
    idle_heartbeat_timeout: timedelta = timedelta(seconds=1800)
    # A runner whose stream broke may re-attach to its executions for this long.
    reattach_grace: timedelta = timedelta(seconds=10)
    # An assignment the runner has not accepted by then is taken back.
    accept_timeout: timedelta = timedelta(seconds=30)
    # A cancelled BUILDING job the runner has not confirmed by then is forced CANCELLED.
    cancel_grace: timedelta = timedelta(seconds=10)
    # How long this replica's liveness row stays valid unrenewed.
    replica_lease: timedelta = timedelta(seconds=15)


class Pulse:
    """An in-process signal that something watched may have changed (pressure, jobs).
    Watchers re-read the database; a missed pulse costs at most their poll interval."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        event = self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()


@dataclass
class Context:
    db: Database
    clock: Clock
    limits: Limits
    replica_id: str
    commits: GroupCommit
    deadlines: Deadlines = field(default_factory=Deadlines)
    rules: SchedulingRules = field(default_factory=SchedulingRules)
    # Breaks ties between flavors of equal priority (SPEC §5.1); seeded in tests.
    rng: random.Random = field(default_factory=random.Random)
    # Called after a commit that made jobs runnable (submitted, requeued, now due).
    wakeups: list[Callable[[], None]] = field(default_factory=list)
    # Called after a commit that may have made waiting jobs ready (a back-off cleared,
    # a flavor added, a dedupe original failed): the due loop runs at once.
    due_wakeups: list[Callable[[], None]] = field(default_factory=list)
    # Called after a commit that started executions elsewhere than on a runner stream of
    # this replica (a distributor claimed jobs): their deadlines now run, and the sweep,
    # which sleeps while nothing is in flight, looks at them from now on.
    sweep_wakeups: list[Callable[[], None]] = field(default_factory=list)
    changes: Pulse = field(default_factory=Pulse)
    known_flavors: KnownFlavors = field(default_factory=KnownFlavors)

    def wake(self) -> None:
        for wake in self.wakeups:
            wake()
        self.changes.fire()

    def wake_due(self) -> None:
        for wake in self.due_wakeups:
            wake()
        self.changes.fire()

    def wake_sweep(self) -> None:
        for wake in self.sweep_wakeups:
            wake()
