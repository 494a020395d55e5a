"""Real dispatcher and runner processes, started from the installed console scripts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
    # The status page's port; None when started with --no-http.
    http_port: int | None = None

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
        port, http_port = _read_ports(process, log)
        yield ServerProcess(process, port, log, http_port)
    finally:
        stop(process)


def _read_ports(
    process: subprocess.Popen[str], log: Path, timeout: float = 30.0
) -> tuple[int, int | None]:
    """The gRPC port and the status page's port (None without one) from the ready line."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"listening on port (\d+)", line)
        if match:
            page = re.search(r"status page on http://[^ ]*:(\d+)/", line)
            return int(match.group(1)), int(page.group(1)) if page else None
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
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
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
        env={**os.environ, "DISPATCHER_SERVER": address},
    )
