"""Statements whose spelling differs between SQLite and PostgreSQL, and the plain
values durations are stored as."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert


def insert_ignoring_conflicts(conn: Connection, table: Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: a unique key decides races between writers."""
    if conn.dialect.name == "postgresql":
        return pg_insert(table).on_conflict_do_nothing()
    return sqlite_insert(table).on_conflict_do_nothing()


def seconds(value: timedelta | None) -> float | None:
    """A duration as stored: seconds, or NULL for none."""
    return None if value is None else value.total_seconds()


def delta(value: float | None) -> timedelta | None:
    return None if value is None else timedelta(seconds=value)
