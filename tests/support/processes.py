"""Real dispatcher and runner processes, started from the installed console scripts.

``dispatcher_server`` writes one token per role into the database before the server
starts (as ``dispatcher tokens create --database`` would); ``runner_process`` and
``run_cli`` then send the runner and the admin token of the server at their address.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.support.tokens import RoleTokens

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment (the venv's, not whatever is on PATH)."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is not installed; run the README's install command")
    return found


@dataclass
class ServerProcess:
    process: subprocess.Popen[str]
    port: int
    log: Path
    tokens: RoleTokens
    # The status page's port; None when started with --no-http.
    http_port: int | None = None
    # The "dispatcher listening on port ..." line.
    banner: str = ""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def dispatcher_server(
    database_url: str,
    workdir: Path,
    *extra: str,
    port: int = 0,
    settings: dict[str, str] | None = None,
    log_name: str = "dispatcher.log",
) -> Iterator[ServerProcess]:
    """``settings``: Settings fields (e.g. reattach_grace_seconds) given as DISPATCHER_*."""
    log = workdir / log_name
    tokens = bootstrap_tokens(database_url)
    env = {**os.environ, **{f"DISPATCHER_{k.upper()}": v for k, v in (settings or {}).items()}}
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                tool("dispatcher"),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--database",
                database_url,
                "--migrate",
                # A free port, so that servers never collide on the default one.
                "--http-listen",
                "127.0.0.1:0",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            cwd=workdir,
            env=env,
        )
    try:
        port, http_port, banner = _read_ports(process, log)
        address = f"127.0.0.1:{port}"
        _TOKENS[address] = tokens
        try:
            yield ServerProcess(process, port, log, tokens, http_port, banner)
        finally:
            _TOKENS.pop(address, None)
    finally:
        stop(process)


# The tokens of each server started here, by address, for the runners and CLI calls
# that name only the address.
_TOKENS: dict[str, RoleTokens] = {}


def tokens_at(address: str) -> RoleTokens | None:
    return _TOKENS.get(address)


def bootstrap_tokens(database_url: str) -> RoleTokens:
    """One new token per role, written straight into the database (migrated first)."""
    from dispatcher.app import prepare_database
    from dispatcher.domain import tokens as rules
    from dispatcher.settings import Settings
    from dispatcher.store import tokens as store

    db = prepare_database(Settings(database_url=database_url, migrate_on_start=True))
    secrets_by_role: dict[str, str] = {}
    suffix = secrets.token_hex(3)
    try:
        with db.transaction() as conn:
            for role in rules.Role:
                random_part = rules.new_random_part()
                token = store.insert_token(
                    conn,
                    f"test-{role.value}-{suffix}",
                    role,
                    rules.hash_secret(random_part),
                    datetime.now(UTC),
                )
                secrets_by_role[role.value] = rules.compose(token.id, random_part)
    finally:
        db.close()
    return RoleTokens(**secrets_by_role)


def _read_ports(
    process: subprocess.Popen[str], log: Path, timeout: float = 30.0
) -> tuple[int, int | None, str]:
    """The gRPC port, the status page's port (None without one) and the ready line."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"listening on port (\d+)", line)
        if match:
            page = re.search(r"status page on http://[^ ]*:(\d+)/", line)
            return int(match.group(1)), int(page.group(1)) if page else None, line.strip()
    stop(process)
    raise RuntimeError(f"dispatcher did not start:\n{log.read_text()}")


@contextmanager
def runner_process(
    address: str, name: str, workdir: Path, *extra: str
) -> Iterator[subprocess.Popen[str]]:
    log = workdir / f"runner-{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [tool("dispatcher-runner"), "--server", address, "--name", name, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **_token_env(address, "runner")},
        )
    try:
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[str], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGCONT)  # a frozen process cannot act on SIGTERM
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout:
        process.stdout.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kill_hard(process: subprocess.Popen[str]) -> None:
    """kill -9: no clean-up, no goodbye."""
    process.send_signal(signal.SIGKILL)
    process.wait()


def run_cli(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a ``dispatcher`` client command against ``address`` (given through the
    environment, so nothing after ``--`` is taken for a flag)."""
    return subprocess.run(
        [tool("dispatcher"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "DISPATCHER_SERVER": address, **_token_env(address, "admin")},
    )


def _token_env(address: str, role: str) -> dict[str, str]:
    # Several replicas' addresses (a runner's --server list): the first one's tokens.
    tokens = _TOKENS.get(address.split(",")[0])
    return {"DISPATCHER_TOKEN": getattr(tokens, role)} if tokens is not None else {}
