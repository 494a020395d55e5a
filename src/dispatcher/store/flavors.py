"""Named queries about flavors and the pressure on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, delete, func, insert, select, update

from dispatcher.domain.model import Flavor
from dispatcher.domain.states import UNFINISHED_STATES, WAITING_STATES
from dispatcher.store.tables import flavors, jobs

_F = flavors.c
_J = jobs.c


def _to_flavor(row: Row[Any]) -> Flavor:
    return Flavor(
        name=row.name,
        platform=row.platform,
        labels=frozenset(row.labels),
        priority=row.priority,
        enabled=row.enabled,
        min_pressure=row.min_pressure,
    )


def insert_flavor(conn: Connection, flavor: Flavor, now: datetime) -> int:
    values = {
        "name": flavor.name,
        "platform": flavor.platform,
        "labels": sorted(flavor.labels),
        "priority": flavor.priority,
        "enabled": flavor.enabled,
        "min_pressure": flavor.min_pressure,
        "created_at": now,
    }
    return int(conn.execute(insert(flavors).returning(_F.id), values).scalar_one())


def flavor_id(conn: Connection, name: str, *, for_update: bool = False) -> int | None:
    query = select(_F.id).where(_F.name == name)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    return conn.execute(query).scalar_one_or_none()


def list_flavors(conn: Connection, platform: str | None = None) -> list[tuple[int, Flavor]]:
    query = select(flavors).order_by(_F.platform, _F.priority.desc(), _F.name)
    if platform is not None:
        query = query.where(_F.platform == platform)
    return [(r.id, _to_flavor(r)) for r in conn.execute(query)]


def set_enabled(conn: Connection, flavor_id: int, enabled: bool) -> None:
    conn.execute(update(flavors).where(_F.id == flavor_id).values(enabled=enabled))


def delete_flavor(conn: Connection, flavor_id: int) -> None:
    # Finished and running jobs keep no link to a flavor that no longer exists.
    conn.execute(update(jobs).where(_J.flavor_id == flavor_id).values(flavor_id=None))
    conn.execute(delete(flavors).where(_F.id == flavor_id))


def waiting_job_ids(conn: Connection, flavor_id: int | None, platform: str) -> list[int]:
    """Waiting jobs of ``platform`` assigned to ``flavor_id`` (None: to no flavor)."""
    cond = _J.flavor_id.is_(None) if flavor_id is None else _J.flavor_id == flavor_id
    query = select(_J.id).where(
        cond,
        _J.platform == platform,
        _J.state.in_(sorted(s.value for s in WAITING_STATES)),
    )
    return list(conn.execute(query.order_by(_J.id)).scalars())


def set_job_flavor(conn: Connection, job_ids: list[int], flavor_id: int | None) -> None:
    if job_ids:
        conn.execute(update(jobs).where(_J.id.in_(job_ids)).values(flavor_id=flavor_id))


def unfinished_per_flavor(conn: Connection) -> dict[int, int]:
    rows = conn.execute(
        select(_J.flavor_id, func.count())
        .where(
            _J.flavor_id.is_not(None),
            _J.state.in_(sorted(s.value for s in UNFINISHED_STATES)),
        )
        .group_by(_J.flavor_id)
    )
    return {flavor: int(n) for flavor, n in rows}
