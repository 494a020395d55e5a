"""The use cases wired on a real database with a manual clock, for lifecycle tests."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from dispatcher.domain.clock import ManualClock
from dispatcher.domain.model import RunnerHello
from dispatcher.domain.rules import SchedulingRules
from dispatcher.domain.validation import Limits
from dispatcher.lifecycle.backoffs import Backoffs
from dispatcher.lifecycle.batching import GroupCommit
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.executions import Executions
from dispatcher.lifecycle.explain import Explainer
from dispatcher.lifecycle.flavors import Flavors
from dispatcher.lifecycle.jobs import Demand, Jobs
from dispatcher.lifecycle.schedules import Schedules
from dispatcher.lifecycle.sessions import Sessions
from dispatcher.store.database import Database


@dataclass
class Services:
    db: Database
    clock: ManualClock
    jobs: Jobs
    executions: Executions
    sessions: Sessions
    flavors: Flavors
    schedules: Schedules
    backoffs: Backoffs
    explainer: Explainer
    ctx: Context
    wakeups: list[str] = field(default_factory=list)
    # Each runner's latest resume token, as its Welcome would have carried it.
    resume_tokens: dict[str, str] = field(default_factory=dict)

    async def connect(
        self,
        name: str = "r1",
        *,
        platform: str = "linux/x86_64",
        labels: frozenset[str] = frozenset(),
        capacity: int = 1,
    ) -> Demand:
        opened = await self.sessions.open(
            RunnerHello(name=name, platform=platform, labels=labels, capacity=capacity)
        )
        self.resume_tokens[name] = opened.resume_token
        return Demand(opened.session_id, name, platform, labels, capacity)


@asynccontextmanager
async def services(
    db: Database,
    *,
    replica_id: str = "replica-a",
    rules: SchedulingRules | None = None,
    seed: int = 0,
) -> AsyncIterator[Services]:
    clock = ManualClock()
    commits = GroupCommit(db)
    ctx = Context(
        db=db,
        clock=clock,
        limits=Limits(),
        replica_id=replica_id,
        commits=commits,
        rules=rules or SchedulingRules(),
        rng=random.Random(seed),
    )
    built = Services(
        db,
        clock,
        Jobs(ctx),
        Executions(ctx),
        Sessions(ctx),
        Flavors(ctx),
        Schedules(ctx),
        Backoffs(ctx),
        Explainer(ctx),
        ctx,
    )
    ctx.wakeups.append(lambda: built.wakeups.append("wake"))
    commits.start()
    await built.sessions.register_replica()
    try:
        yield built
    finally:
        await commits.stop()
