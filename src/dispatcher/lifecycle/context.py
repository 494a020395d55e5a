"""What every use case needs: the database, the clock, the limits, and a way to say
"jobs may be runnable now" to whoever assigns them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dispatcher.domain.clock import Clock
from dispatcher.domain.validation import Limits
from dispatcher.lifecycle.batching import GroupCommit
from dispatcher.store.database import Database


@dataclass
class Context:
    db: Database
    clock: Clock
    limits: Limits
    replica_id: str
    commits: GroupCommit
    # Called after a commit that made jobs runnable (submitted, requeued, now due).
    wakeups: list[Callable[[], None]] = field(default_factory=list)

    def wake(self) -> None:
        for wake in self.wakeups:
            wake()
