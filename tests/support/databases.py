"""PostgreSQL for the tests: one server per run, one throwaway database per run.

Environment variables:

``DISPATCHER_TEST_PG``
    Where the server comes from.

    ``auto`` (default)
        the server at ``DISPATCHER_TEST_PG_URL`` if it accepts connections, else a
        throwaway server started from the installed binaries, else the PostgreSQL tests
        skip ("no PostgreSQL: ...").
    ``server``
        only the server at ``DISPATCHER_TEST_PG_URL``.
    ``throwaway``
        only a throwaway server (how the fallback is exercised).
    ``off``
        no PostgreSQL: the PostgreSQL tests skip.

``DISPATCHER_TEST_PG_URL``
    SQLAlchemy URL of an existing server and of a database on it that the tests connect
    to only to run ``CREATE DATABASE`` / ``DROP DATABASE``. Default
    ``postgresql+psycopg2://postgres@127.0.0.1:5432/test``. Its contents are never
    touched: each run creates ``dispatcher_test_<pid>_<hex>`` databases and drops them.

``DISPATCHER_TEST_PG_CTL``
    The ``pg_ctl`` that starts a throwaway server. Default: ``pg_ctl`` on ``PATH``, else
    the newest ``/usr/lib/postgresql/*/bin/pg_ctl`` (Debian), ``/usr/pgsql-*/bin``.

``DISPATCHER_REQUIRE_POSTGRES=1`` (read by tests/conftest.py)
    A missing PostgreSQL, or any skipped test marked ``postgres``, is a failure. CI sets it.

A throwaway server lives in a temporary directory (data, socket, log), listens on a free
port on 127.0.0.1 with trust authentication, and is stopped and deleted when the run ends.
PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` OS user (via
``runuser``), with the directory handed to that user.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

DEFAULT_SERVER_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
MODES = ("auto", "server", "throwaway", "off")
DATABASE_PREFIX = "dispatcher_test"
CONNECT_TIMEOUT_SECONDS = 3
THROWAWAY_OS_USER = "postgres"


class PostgresUnavailable(Exception):
    """No PostgreSQL server could be found or started; the message says why."""


@dataclass
class PostgresServer:
    """A reachable PostgreSQL server. ``admin_url`` points at a database used only for
    ``CREATE DATABASE`` / ``DROP DATABASE``."""

    admin_url: URL
    description: str
    _stop: Callable[[], None] | None = field(default=None, repr=False)

    def create_database(self, prefix: str = DATABASE_PREFIX) -> str:
        """Create an empty database with a unique name; return its SQLAlchemy URL."""
        name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
        engine = self._admin_engine()
        try:
            with engine.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote(name)
                conn.exec_driver_sql(f"CREATE DATABASE {quoted} TEMPLATE template0 ENCODING 'UTF8'")
        finally:
            engine.dispose()
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing any connection left."""
        name = make_url(url).database
        if not name or not name.startswith(DATABASE_PREFIX):
            raise ValueError(f"refusing to drop {name!r}: not a test database")
        engine = self._admin_engine()
        try:
            with engine.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote(name)
                version = conn.dialect.server_version_info or (0,)
                if version >= (13,):
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
                else:
                    conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": name},
                    )
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
        finally:
            engine.dispose()

    def stop(self) -> None:
        """Stop the server if this run started it; a no-op for an existing server."""
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()

    def _admin_engine(self) -> Engine:
        return create_engine(
            self.admin_url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        )


def provide_server() -> PostgresServer:
    """Find or start a server as ``DISPATCHER_TEST_PG`` says; raise
    :class:`PostgresUnavailable` with the reasons when there is none."""
    mode = os.environ.get("DISPATCHER_TEST_PG", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise PostgresUnavailable(f"DISPATCHER_TEST_PG={mode!r} is not one of {', '.join(MODES)}")
    if mode == "off":
        raise PostgresUnavailable("DISPATCHER_TEST_PG=off")
    reasons: list[str] = []
    if mode in ("auto", "server"):
        try:
            return existing_server(os.environ.get("DISPATCHER_TEST_PG_URL") or DEFAULT_SERVER_URL)
        except PostgresUnavailable as exc:
            reasons.append(str(exc))
    if mode in ("auto", "throwaway"):
        try:
            return throwaway_server()
        except PostgresUnavailable as exc:
            reasons.append(str(exc))
    raise PostgresUnavailable("; ".join(reasons))


def existing_server(url: str) -> PostgresServer:
    """The server at ``url``, if it accepts connections."""
    admin_url = make_url(url)
    shown = admin_url.render_as_string(hide_password=True)
    if admin_url.get_backend_name() != "postgresql":
        raise PostgresUnavailable(f"{shown} is not a PostgreSQL URL")
    server = PostgresServer(admin_url, f"server at {shown}")
    engine = server._admin_engine()
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as exc:
        first_line = str(exc.orig or exc).strip().splitlines()[0]
        raise PostgresUnavailable(f"{shown} does not accept connections ({first_line})") from exc
    finally:
        engine.dispose()
    return server


def find_pg_ctl() -> str | None:
    configured = os.environ.get("DISPATCHER_TEST_PG_CTL")
    if configured:
        return configured
    on_path = shutil.which("pg_ctl")
    if on_path:
        return on_path
    candidates = [
        *glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),  # Debian, Ubuntu
        *glob.glob("/usr/pgsql-*/bin/pg_ctl"),  # PGDG RPMs
    ]

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path))

    return max(candidates, key=version) if candidates else None


def throwaway_server() -> PostgresServer:
    """Start a PostgreSQL server of our own (pytest-postgresql's executor over pg_ctl)."""
    try:
        from mirakuru.exceptions import ExecutorError
        from pytest_postgresql.exceptions import ExecutableMissingException, PostgreSQLUnsupported
        from pytest_postgresql.executors import PostgreSQLExecutor
    except ImportError as exc:
        raise PostgresUnavailable(f"cannot start a throwaway server: {exc}") from exc

    pg_ctl = find_pg_ctl()
    if pg_ctl is None:
        raise PostgresUnavailable(
            "cannot start a throwaway server: no pg_ctl (set DISPATCHER_TEST_PG_CTL)"
        )
    if not os.access(pg_ctl, os.X_OK):
        raise PostgresUnavailable(f"cannot start a throwaway server: {pg_ctl} is not executable")
    base = Path(tempfile.mkdtemp(prefix="dispatcher-pg-"))
    executable = pg_ctl
    if os.geteuid() == 0:
        try:
            executable = str(_run_as_os_user(pg_ctl, base, THROWAWAY_OS_USER))
        except PostgresUnavailable:
            shutil.rmtree(base, ignore_errors=True)
            raise
    port = _free_port()
    logfile = base / "postgresql.log"
    executor = PostgreSQLExecutor(
        executable=executable,
        host="127.0.0.1",
        port=port,
        datadir=str(base / "data"),
        unixsocketdir=str(base),
        logfile=str(logfile),
        startparams="-w",
        dbname="postgres",
        user="postgres",
        timeout=60,
        # A test server: durability buys nothing, speed does.
        postgres_options="-c synchronous_commit=off -c full_page_writes=off",
    )

    stopped = False

    def stop() -> None:
        nonlocal stopped
        if stopped:
            return
        stopped = True
        try:
            with contextlib.suppress(ExecutorError, OSError, subprocess.SubprocessError):
                executor.stop()
        finally:
            shutil.rmtree(base, ignore_errors=True)

    try:
        executor.start()
    except (
        ExecutorError,
        ExecutableMissingException,
        PostgreSQLUnsupported,
        OSError,
        subprocess.SubprocessError,
    ) as exc:
        log = _tail(logfile)
        stop()
        raise PostgresUnavailable(
            f"cannot start a throwaway server with {pg_ctl}: {exc}" + (f"\n{log}" if log else "")
        ) from exc
    # Should the session end without running its finalizers, do not leave a server behind.
    atexit.register(stop)
    url = URL.create("postgresql+psycopg2", "postgres", None, "127.0.0.1", port, "postgres")
    server = PostgresServer(url, f"throwaway server on port {port} ({base})", stop)
    try:
        existing_server(url.render_as_string(hide_password=False))
    except PostgresUnavailable:
        stop()
        raise
    return server


def _run_as_os_user(pg_ctl: str, base: Path, user: str) -> Path:
    """Hand ``base`` to ``user`` and return a pg_ctl wrapper that runs as that user."""
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("cannot start a throwaway server as root: no runuser")
    try:
        account = pwd.getpwnam(user)
    except KeyError as exc:
        raise PostgresUnavailable(
            f"cannot start a throwaway server as root: no OS user {user!r} to run it as"
        ) from exc
    os.chown(base, account.pw_uid, account.pw_gid)
    wrappers = Path(tempfile.mkdtemp(prefix="pg-ctl-", dir=base))
    wrapper = wrappers / "pg_ctl"
    wrapper.write_text(f'#!/bin/sh\ncd / && exec "{runuser}" -u {user} -- "{pg_ctl}" "$@"\n')
    wrapper.chmod(stat.S_IRWXU)
    return wrapper


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
