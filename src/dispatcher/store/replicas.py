"""Named queries about the replicas sharing the database, for operators (server info)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select

from dispatcher.domain.model import Replica
from dispatcher.store.tables import replicas

_P = replicas.c


def live_replicas(conn: Connection, now: datetime) -> list[Replica]:
    """Replicas whose lease has not run out at ``now``, oldest first."""
    rows = conn.execute(
        select(replicas).where(_P.lease_until >= now).order_by(_P.started_at, _P.id)
    )
    return [Replica(r.id, r.version, r.started_at, r.lease_until) for r in rows]
