"""The claim-order index in claim order on SQLite too.

Migration 0001 created ix_jobs_claim_order through a batch operation that dropped the
DESC of ``priority`` on SQLite, so SQLite sorted every waiting job of a platform to find
the next one. PostgreSQL had it right; recreating it there changes nothing.

Revision ID: 0004b
Revises: 0004_tokens
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004b"
down_revision: str | None = "0004_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CREATE = (
    "CREATE INDEX ix_jobs_claim_order ON jobs (platform, priority DESC, not_before, id) "
    "WHERE state = 'QUEUED'"
)


def upgrade() -> None:
    op.execute("DROP INDEX ix_jobs_claim_order")
    op.execute(_CREATE)


def downgrade() -> None:
    # The corrected index serves the old code as well.
    pass
