"""Shared fixtures: databases on SQLite and PostgreSQL.

``database_url``   (per test, parametrised ``sqlite`` / ``postgresql``) URL of a database
                   with the schema at head and no rows. SQLite: a copy, in ``tmp_path``, of
                   a file migrated once per run. PostgreSQL: the run's database (``pg_url``)
                   with every table of ``metadata`` truncated (RESTART IDENTITY CASCADE).
``db``             (per test) a ``Database`` on ``database_url``, closed after the test.
``empty_database_url``
                   (per test, ``sqlite`` / ``postgresql``) a brand-new database with no
                   schema at all (PostgreSQL: created for the test, dropped after it).
``pg_server``      (session) the PostgreSQL server (tests/support/databases.py says where
                   it comes from and which environment variables steer it).
``pg_url``         (session) URL of the run's PostgreSQL database, schema at head, dropped
                   at the end of the run. Shared by every test: a test that writes rows
                   should take ``database_url``/``db`` instead, narrowed to PostgreSQL
                   with ``@pytest.mark.parametrize("database_url", ["postgresql"],
                   indirect=True)``.

Every test that reaches PostgreSQL is marked ``postgres`` (automatically, too). Without a
server these tests skip; with ``DISPATCHER_REQUIRE_POSTGRES=1`` (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.support import memory_watch
from tests.support.databases import PostgresServer, PostgresUnavailable, provide_server

if TYPE_CHECKING:
    from dispatcher.store.database import Database

REQUIRE_POSTGRES = os.environ.get("DISPATCHER_REQUIRE_POSTGRES", "") not in ("", "0")

# Fixtures whose use means a test needs PostgreSQL.
_PG_FIXTURES = ("pg_server", "pg_url")
# Parametrised fixtures whose "postgresql" value means a test needs PostgreSQL.
_PG_PARAMETRISED = ("database_url", "empty_database_url")

# What the pg_server fixture found, for the summary at the end of the run.
_postgres_used: list[str] = []

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


# The test running now, for the memory watch's report.
_current_test: dict[str, str] = {}


def pytest_configure(config: pytest.Config) -> None:
    capture = config.pluginmanager.getplugin("capturemanager")

    def uncapture() -> None:
        if capture is not None:
            capture.suspend_global_capture(in_=False)

    memory_watch.start(_current_test, uncapture)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _current_test["id"] = item.nodeid


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``postgres`` every test that reaches PostgreSQL, including through a fixture
    or an indirect parametrisation, so that CI's rule (below) sees all of them."""
    for item in items:
        if item.get_closest_marker("postgres"):
            continue
        fixturenames = getattr(item, "fixturenames", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(name in fixturenames for name in _PG_FIXTURES) or any(
            params.get(name) == "postgresql" for name in _PG_PARAMETRISED
        ):
            item.add_marker(pytest.mark.postgres)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """With DISPATCHER_REQUIRE_POSTGRES=1 a skipped ``postgres`` test is a failure."""
    report: pytest.TestReport = yield
    if (
        REQUIRE_POSTGRES
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("postgres")
    ):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"DISPATCHER_REQUIRE_POSTGRES=1, but this PostgreSQL test was skipped: {reason}"
        )
    return report


# --- PostgreSQL -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    try:
        server = provide_server()
    except PostgresUnavailable as exc:
        reason = f"no PostgreSQL: {exc}"
        _postgres_used.append(reason)
        if REQUIRE_POSTGRES:
            pytest.fail(f"{reason} (DISPATCHER_REQUIRE_POSTGRES=1)", pytrace=False)
        pytest.skip(reason)
    _postgres_used.append(server.description)
    try:
        yield server
    finally:
        server.stop()


class _SharedPostgres:
    """The run's PostgreSQL database: migrated once, truncated before each test."""

    def __init__(self, url: str) -> None:
        from dispatcher.store.tables import metadata

        self.url = url
        self.engine: Engine = create_engine(url, poolclass=NullPool)
        preparer = self.engine.dialect.identifier_preparer
        tables = ", ".join(preparer.format_table(t) for t in metadata.sorted_tables)
        self._truncate = f"TRUNCATE TABLE {tables} RESTART IDENTITY CASCADE" if tables else ""

    def truncate(self) -> None:
        if not self._truncate:
            return
        try:
            with self.engine.begin() as conn:
                conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
                conn.exec_driver_sql(self._truncate)
        except OperationalError as exc:
            raise RuntimeError(
                "could not truncate the test database: an earlier test probably left a "
                "connection open (a Database or engine not closed?)"
            ) from exc


@pytest.fixture(scope="session")
def _shared_postgres(pg_server: PostgresServer) -> Iterator[_SharedPostgres]:
    from dispatcher.store.database import Database
    from dispatcher.store.migrate import upgrade

    url = pg_server.create_database()
    shared: _SharedPostgres | None = None
    try:
        database = Database(url)
        try:
            upgrade(database)
        finally:
            database.close()
        shared = _SharedPostgres(url)
        yield shared
    finally:
        if shared is not None:
            shared.engine.dispose()
        pg_server.drop_database(url)


@pytest.fixture(scope="session")
def pg_url(_shared_postgres: _SharedPostgres) -> str:
    return _shared_postgres.url


# --- SQLite -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once per run; tests get copies."""
    from dispatcher.store.database import Database
    from dispatcher.store.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "dispatcher.db"
    database = Database(f"sqlite:///{path}")
    try:
        upgrade(database)
    finally:
        database.close()
    return path


def _copy_sqlite(template: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        source = template.with_name(template.name + suffix)
        if source.exists():
            shutil.copyfile(source, target.with_name(target.name + suffix))


# --- Per test ---------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "dispatcher.db"
        _copy_sqlite(request.getfixturevalue("_sqlite_template"), path)
        return f"sqlite:///{path}"
    if request.param == "postgresql":
        shared: _SharedPostgres = request.getfixturevalue("_shared_postgres")
        shared.truncate()
        return shared.url
    raise ValueError(f"unknown database {request.param!r}")


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    from dispatcher.store.database import Database

    database = Database(database_url)
    try:
        yield database
    finally:
        database.close()


@pytest.fixture(params=BACKENDS)
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    if request.param != "postgresql":
        raise ValueError(f"unknown database {request.param!r}")
    server: PostgresServer = request.getfixturevalue("pg_server")
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _postgres_used:
        terminalreporter.write_line(f"PostgreSQL for this run: {line}")


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings: dict[str, Any] = {
        name: os.environ[name]
        for name in ("DISPATCHER_TEST_PG", "DISPATCHER_TEST_PG_URL", "DISPATCHER_REQUIRE_POSTGRES")
        if name in os.environ
    }
    if "DISPATCHER_TEST_PG_URL" in settings:
        url = make_url(settings["DISPATCHER_TEST_PG_URL"])
        settings["DISPATCHER_TEST_PG_URL"] = url.render_as_string(hide_password=True)
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
    return [f"dispatcher test databases: {shown}"]
