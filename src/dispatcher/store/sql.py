"""Statements whose spelling differs between SQLite and PostgreSQL, and the plain
values durations are stored as."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import JSON, Column, Connection, CursorResult, Dialect, Table, TextClause
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


# --- PostgreSQL's batch inserts ------------------------------------------------------
#
# The same cost on PostgreSQL: psycopg2 adapts each value of a parameter list in turn
# (2-5 us apiece), more than the insert costs the server. A batch goes as one array
# literal per column instead, written here, and the statement unnests them. Values are
# in the form the table stores (times as naive UTC, JSON as its text).


def pg_array_of(column: Column[Any], dialect: Dialect) -> str:
    """``CAST(%(<column>)s AS <type>[])``: a column's values in a batch, as one array
    (JSON travels as text, cast where it is inserted)."""
    kind = "TEXT" if isinstance(column.type, JSON) else column.type.compile(dialect=dialect)
    return f"CAST(%({column.name})s AS {kind}[])"


def pg_value_of(column: Column[Any]) -> str:
    """A column's value as inserted from the unnested arrays (JSON cast from its text)."""
    return f"CAST({column.name} AS JSON)" if isinstance(column.type, JSON) else column.name


def pg_time(value: datetime | None) -> datetime | None:
    """A time as PostgreSQL stores it here: naive UTC (see tables.UtcDateTime)."""
    if value is None:
        return None
    if value.tzinfo is UTC:
        return value.replace(tzinfo=None)
    if value.tzinfo is None:
        raise ValueError("naive datetime given to the store; use an aware UTC time")
    return value.astimezone(UTC).replace(tzinfo=None)


def pg_array(values: Iterable[object]) -> str:
    """The text of a one-dimensional PostgreSQL array of ``values``: str, int, float,
    bool, bytes, naive datetime (see :func:`pg_time`) or None (NULL)."""
    return "{" + ",".join([_ELEMENT[type(v)](v) for v in values]) + "}"


def _quoted(text: str) -> str:
    # Inside an array, an element in double quotes is taken as it is but for a
    # backslash, which escapes the next character ("NULL" quoted is the string).
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_ELEMENT: dict[type, Callable[[Any], str]] = {
    str: _quoted,
    int: str,
    bool: lambda v: "t" if v else "f",
    float: repr,
    type(None): lambda _: "NULL",
    bytes: lambda v: _quoted("\\x" + v.hex()),
    datetime: lambda v: _quoted(v.isoformat(" ")),
}


# --- PostgreSQL's prepared statements ----------------------------------------------
#
# An idle farm's submit is one long statement (store/jobs.py insert_job_bound); parsing
# and planning it again on every call took PostgreSQL longer than running it. Each
# pooled connection prepares it once (PREPARE outlives transactions, rolled back or
# not, and lives as long as the connection) and then only EXECUTEs it. Connections
# must be PostgreSQL sessions of their own, as LISTEN needs anyway: not a transaction
# pooler's.

_PREPARED_KEY = "dispatcher_prepared"
_PARAMETER = re.compile(r"%\((\w+)\)s")


@dataclass(frozen=True)
class _Prepared:
    name: str
    prepare: str
    execute: str
    processors: dict[str, Callable[[Any], Any]]


@cache
def _prepared(statement: TextClause, dialect: Dialect) -> _Prepared:
    compiled = statement.compile(dialect=dialect)
    order: list[str] = []

    def positional(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        kind = compiled.binds[name].type
        marker = f"${order.index(name) + 1}"
        # Typed here: in a SELECT list nothing else tells PostgreSQL a parameter's type.
        return marker if kind._isnull else f"CAST({marker} AS {kind.compile(dialect=dialect)})"

    body = _PARAMETER.sub(positional, compiled.string)
    name = "dispatcher_" + hashlib.sha256(body.encode()).hexdigest()[:16]
    processors: dict[str, Callable[[Any], Any]] = {}
    for parameter in order:  # each type's own conversion (UTC times, JSON, ...)
        process = compiled.binds[parameter].type.bind_processor(dialect)
        if process is not None:
            processors[parameter] = process
    return _Prepared(
        name=name,
        prepare=f"PREPARE {name} AS {body}",
        execute=f"EXECUTE {name} ({', '.join(f'%({n})s' for n in order)})",
        processors=processors,
    )


def execute_prepared(
    conn: Connection, statement: TextClause, params: dict[str, Any]
) -> CursorResult[Any]:
    """Run ``statement`` (a text() whose parameters are typed where the SQL does not
    cast them) as a prepared statement of this PostgreSQL connection. psycopg2 only,
    whose parameters are written into the EXECUTE: a driver that binds them on the
    server (psycopg 3) cannot give EXECUTE parameters, and runs ``statement`` as is."""
    if conn.dialect.driver != "psycopg2":
        return conn.execute(statement, params)
    prepared = _prepared(statement, conn.dialect)
    known: set[str] = conn.connection.info.setdefault(_PREPARED_KEY, set())
    if prepared.name not in known:
        conn.exec_driver_sql(prepared.prepare)
        known.add(prepared.name)
    processors = prepared.processors
    return conn.exec_driver_sql(
        prepared.execute,
        {k: processors[k](v) if k in processors else v for k, v in params.items()},
    )
