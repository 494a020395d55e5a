"""The pure parts of the scheduling rules (SPEC §5): which flavor a job gets, how long a
retry waits, how long a runner is quarantined, when a schedule is due next, and the
replay window. The lifecycle layer applies them inside transactions."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher.domain.errors import InvalidInput
from dispatcher.domain.model import Flavor, RetryPolicy


@dataclass(frozen=True)
class SchedulingRules:
    """Farm-wide settings of the rules; per-job settings live on the JobSpec."""

    # Replay window (SPEC §5.5): an origin time further in the future than this...
    replay_slop: timedelta = timedelta(minutes=5)
    # ...or further in the past than this is refused.
    replay_max_age: timedelta = timedelta(days=7)
    # Terminal jobs are deleted this long after they finished; never below max age,
    # or a replayed request could find its idempotency key forgotten.
    retention: timedelta = timedelta(days=30)
    # A runner whose executions are lost this many times in a row gets no work...
    quarantine_after: int = 3
    # ...for this long, doubled for each quarantine since its last good result.
    quarantine_base: timedelta = timedelta(seconds=30)
    quarantine_max: timedelta = timedelta(hours=1)

    def __post_init__(self) -> None:
        if self.retention < self.replay_max_age:
            raise InvalidInput(
                "retention must be at least replay_max_age, so a replayed submission "
                "cannot outlive the record of the first one"
            )


def choose_flavor(
    flavors: Iterable[Flavor], platform: str, labels: frozenset[str], rng: random.Random
) -> Flavor | None:
    """The enabled flavor of highest priority that serves the job; ties at random."""
    serving = [f for f in flavors if f.enabled and f.serves(platform, labels)]
    if not serving:
        return None
    best = max(f.priority for f in serving)
    return rng.choice(sorted((f for f in serving if f.priority == best), key=lambda f: f.name))


def retry_delay(policy: RetryPolicy, failures: int) -> timedelta:
    """How long a job waits before its next try after ``failures`` failures (>= 1)."""
    seconds = policy.initial_delay.total_seconds() * policy.multiplier ** max(0, failures - 1)
    return min(timedelta(seconds=seconds), policy.max_delay)


def quarantine_for(rules: SchedulingRules, previous_quarantines: int) -> timedelta:
    growth: int = 2 ** min(previous_quarantines, 20)
    return min(rules.quarantine_base * growth, rules.quarantine_max)


# A failing schedule's interval is stretched at most this many times, so a schedule that
# recovers is back within a bounded wait.
SCHEDULE_MAX_STRETCH = 16


def schedule_next_due(started_at: datetime, interval: timedelta, failures: int) -> datetime:
    """Next due = last start + interval, stretched (doubled) per consecutive failure."""
    stretch: int = min(2 ** min(failures, 30), SCHEDULE_MAX_STRETCH)
    return started_at + interval * stretch


def replay_refusal(
    rules: SchedulingRules, origin_time: datetime | None, now: datetime
) -> str | None:
    """Why a submission falls outside the replay window, or None when it does not."""
    if origin_time is None:
        return None
    if origin_time > now + rules.replay_slop:
        return (
            f"origin_time {origin_time.isoformat()} is more than "
            f"{rules.replay_slop} in the future (replay window)"
        )
    if origin_time < now - rules.replay_max_age:
        return (
            f"origin_time {origin_time.isoformat()} is more than "
            f"{rules.replay_max_age} in the past (replay window)"
        )
    return None
