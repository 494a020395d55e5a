"""The migrations produce exactly the schema of record (``dispatcher.store.tables``), on
SQLite and on PostgreSQL, and applying them again changes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from dispatcher.store.database import Database
from dispatcher.store.migrate import current_revision, head_revision, is_up_to_date, upgrade
from dispatcher.store.tables import metadata


@pytest.fixture
def fresh_db(empty_database_url: str) -> Iterator[Database]:
    database = Database(empty_database_url)
    try:
        yield database
    finally:
        database.close()


def schema_diff(db: Database) -> list[Any]:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def schema_snapshot(db: Database) -> dict[str, Any]:
    """Everything the inspector can see, in a comparable form."""
    with db.engine.connect() as conn:
        inspector = inspect(conn)
        return {
            table: plain(
                {
                    "columns": inspector.get_columns(table),
                    "pk": inspector.get_pk_constraint(table),
                    "fks": inspector.get_foreign_keys(table),
                    "indexes": inspector.get_indexes(table),
                    "uniques": inspector.get_unique_constraints(table),
                    "checks": inspector.get_check_constraints(table),
                }
            )
            for table in inspector.get_table_names()
        }


def plain(value: Any) -> Any:
    """Reflection output as plain, comparable data (types and SQL fragments as text)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return sorted((plain(v) for v in value), key=repr)
    if isinstance(value, str | int | float | bool | None):
        return value
    return str(value)


def test_a_fresh_database_starts_without_a_revision(fresh_db: Database) -> None:
    assert current_revision(fresh_db) is None
    assert not is_up_to_date(fresh_db)


def test_migrations_produce_the_tables_of_record(fresh_db: Database) -> None:
    upgrade(fresh_db)

    assert schema_diff(fresh_db) == []
    assert is_up_to_date(fresh_db)
    assert current_revision(fresh_db) == head_revision(fresh_db)


def test_upgrade_is_idempotent(fresh_db: Database) -> None:
    upgrade(fresh_db)
    before = schema_snapshot(fresh_db)
    revision = current_revision(fresh_db)

    upgrade(fresh_db)

    assert schema_snapshot(fresh_db) == before
    assert current_revision(fresh_db) == revision
    assert schema_diff(fresh_db) == []
    assert is_up_to_date(fresh_db)


def test_the_db_fixture_is_at_head_and_empty(db: Database) -> None:
    assert is_up_to_date(db)
    with db.transaction() as conn:
        counts = {t.name: conn.execute(t.select()).all() for t in metadata.sorted_tables}
    assert counts == {t.name: [] for t in metadata.sorted_tables}
