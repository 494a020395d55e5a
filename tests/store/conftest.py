"""Fixtures of the store tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import make_url

from dispatcher.store.database import Database


@pytest.fixture(params=["psycopg2", "psycopg"])
def db_of_driver(request: pytest.FixtureRequest, database_url: str) -> Iterator[Database]:
    """The tests' database through each PostgreSQL driver: psycopg2 runs prepared
    statements and takes batches as array text, psycopg (3) binds them on the server."""
    url = make_url(database_url).set(drivername=f"postgresql+{request.param}")
    database = Database(url.render_as_string(hide_password=False))
    try:
        yield database
    finally:
        database.close()
