"""Statements whose spelling differs between SQLite and PostgreSQL, and the plain
values durations are stored as."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cache
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


# --- SQLite's hot statements ---------------------------------------------------------
#
# A batch of claims, results or submitted jobs writes hundreds of rows per statement.
# SQLAlchemy processes every parameter of every row in Python, which cost more than
# SQLite's own work; these hand the driver rows already in the form SQLite stores
# (times as sqlite_time text, JSON as text) in one executemany.


@cache
def sqlite_insert_sql(table: str, columns: tuple[str, ...]) -> str:
    """INSERT INTO table (columns) VALUES (?, ...)."""
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 (names from code)


def sqlite_insert_rows(
    conn: Connection, table: Table, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> list[int]:
    """Insert ``rows`` (values in the order of ``columns``) into an SQLite table whose
    key is its rowid; returns their ids in order. The transaction holds SQLite's one
    write lock (BEGIN IMMEDIATE) and each new rowid is one above the largest, so one
    executemany gives the rows consecutive ids ending at last_insert_rowid()."""
    if not rows:
        return []
    conn.exec_driver_sql(sqlite_insert_sql(table.name, columns), list(rows))
    last = int(conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one())
    return list(range(last - len(rows) + 1, last + 1))


def sqlite_execute_rows(conn: Connection, statement: str, rows: Sequence[tuple[Any, ...]]) -> int:
    """One executemany of a plain SQLite statement; how many rows it changed."""
    if not rows:
        return 0
    return int(conn.exec_driver_sql(statement, list(rows)).rowcount)
