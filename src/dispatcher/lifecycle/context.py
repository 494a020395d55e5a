"""What every use case needs: the database, the clock, the limits, and a way to say
"jobs may be runnable now" to whoever assigns them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from dispatcher.domain.clock import Clock
from dispatcher.domain.validation import Limits
from dispatcher.lifecycle.batching import GroupCommit
from dispatcher.store.database import Database


@dataclass(frozen=True)
class Deadlines:
    """How long the dispatcher waits before it decides (SPEC §5.7, §5.8, §6)."""

    # A session without a heartbeat for this long is dead.
    heartbeat_timeout: timedelta = timedelta(seconds=30)
    # A runner whose stream broke may re-attach to its executions for this long.
    reattach_grace: timedelta = timedelta(seconds=10)
    # An assignment the runner has not accepted by then is taken back.
    accept_timeout: timedelta = timedelta(seconds=30)
    # A cancelled BUILDING job the runner has not confirmed by then is forced CANCELLED.
    cancel_grace: timedelta = timedelta(seconds=10)
    # How long this replica's liveness row stays valid unrenewed.
    replica_lease: timedelta = timedelta(seconds=15)


@dataclass
class Context:
    db: Database
    clock: Clock
    limits: Limits
    replica_id: str
    commits: GroupCommit
    deadlines: Deadlines = field(default_factory=Deadlines)
    # Called after a commit that made jobs runnable (submitted, requeued, now due).
    wakeups: list[Callable[[], None]] = field(default_factory=list)

    def wake(self) -> None:
        for wake in self.wakeups:
            wake()
