"""Indexes that keep the per-second deadline sweep and the look at a replica's streams
independent of how many idle streams it holds (issue 8).

- ix_runner_sessions_attached: attached sessions by replica and last heartbeat, so
  silence is found by a range read instead of a pass over every open session.
- ix_runner_sessions_detached: the few detached sessions, by when they detached.
- ix_runner_sessions_open_by_runner: open sessions of a runner (opening a stream
  looks for earlier ones of the same name).
- ix_runners_quarantined and ix_runners_draining: the few runners in quarantine or
  draining.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# name, table, columns, partial-index predicate
_INDEXES = (
    (
        "ix_runner_sessions_attached",
        "runner_sessions",
        ["replica_id", "last_seen_at"],
        "closed_at IS NULL AND detached_at IS NULL",
    ),
    (
        "ix_runner_sessions_detached",
        "runner_sessions",
        ["detached_at"],
        "closed_at IS NULL AND detached_at IS NOT NULL",
    ),
    (
        "ix_runner_sessions_open_by_runner",
        "runner_sessions",
        ["runner_name"],
        "closed_at IS NULL",
    ),
    ("ix_runners_quarantined", "runners", ["quarantined_until"], "quarantined_until IS NOT NULL"),
    ("ix_runners_draining", "runners", ["name"], "state = 'DRAINING'"),
)


def upgrade() -> None:
    for name, table, columns, where in _INDEXES:
        op.create_index(
            name,
            table,
            columns,
            unique=False,
            sqlite_where=sa.text(where),
            postgresql_where=sa.text(where),
        )


def downgrade() -> None:
    for name, table, _, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
