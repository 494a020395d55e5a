"""Distributor executions and backend health as plain values (SPEC §3, §7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class DistributorExecution:
    """An execution run by a distributor instance rather than a runner session."""

    id: int
    job_id: int
    number: int
    distributor: str
    config: dict[str, Any] = field(default_factory=dict)
    token_hash: str = ""
    # The adapter's handle for the task; "" until run() returned.
    backend_token: str = ""
    info_url: str = ""
    started_at: datetime | None = None
    poll_at: datetime | None = None
    poll_failures: int = 0
    finished_at: datetime | None = None
    released_at: datetime | None = None


@dataclass(frozen=True)
class BackendHealth:
    """Whether a distributor instance is thought up; while down its jobs wait."""

    name: str
    up: bool = True
    down_since: datetime | None = None
    cause: str = ""
    next_probe_at: datetime | None = None
    probe_interval: timedelta = timedelta(0)


UP = BackendHealth("")
