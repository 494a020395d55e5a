"""Several real ``dispatcher serve`` processes on one PostgreSQL database, and real
runners spread over them (tests/e2e/test_replicas.py, benchmarks/replicas.py).

Each replica keeps its port across restarts, so that runners given every address
(``--server A,B,C``) find it again. A runner's list starts with its *home* replica and
goes on round the ring, so runners spread evenly and move to the next one when theirs
goes away.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dispatcher.v1 import admin_pb2_grpc
from tests.support.processes import (
    ServerProcess,
    dispatcher_server,
    free_port,
    kill_hard,
    runner_process,
)
from tests.support.tokens import authenticated_sync_channel

BIND_ATTEMPTS = 5


@dataclass
class Replica:
    index: int
    port: int
    server: ServerProcess | None = None
    restarts: int = 0
    _exit: ExitStack = field(default_factory=ExitStack)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def process(self) -> subprocess.Popen[str]:
        if self.server is None:
            raise RuntimeError(f"replica {self.index} is not running")
        return self.server.process


class Cluster:
    """``count`` replicas of one dispatcher on ``database_url``; logs in ``workdir``."""

    def __init__(
        self, database_url: str, workdir: Path, count: int, settings: dict[str, str]
    ) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.settings = settings
        self.replicas = [Replica(i, free_port()) for i in range(count)]
        self._stack = ExitStack()

    def __enter__(self) -> Cluster:
        try:
            for replica in self.replicas:
                self.start(replica.index)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        for replica in self.replicas:
            replica._exit.close()

    # --- replicas ------------------------------------------------------------------

    def start(self, index: int) -> ServerProcess:
        replica = self.replicas[index]
        if replica.server is not None:
            raise RuntimeError(f"replica {index} runs already")
        name = f"replica-{index}" + (f".{replica.restarts}" if replica.restarts else "")
        for attempt in range(1, BIND_ATTEMPTS + 1):
            try:
                replica.server = replica._exit.enter_context(
                    dispatcher_server(
                        self.database_url,
                        self.workdir,
                        port=replica.port,
                        settings=self.settings,
                        log_name=f"{name}.log",
                    )
                )
            except RuntimeError as exc:
                # The port was free when chosen; an outgoing connection may have taken
                # it since as its own (ephemeral) port. Before any runner knows it, a
                # replica takes another; after, it waits for that one to go.
                if "Address already in use" not in str(exc) or attempt == BIND_ATTEMPTS:
                    raise
                if replica.restarts == 0:
                    replica.port = free_port()
                else:
                    time.sleep(1.0)
                continue
            return replica.server
        raise AssertionError("unreachable")

    def kill(self, index: int) -> None:
        """kill -9: no goodbye, no retiring, no detaching."""
        replica = self.replicas[index]
        kill_hard(replica.process)
        self._forget(replica)

    def stop(self, index: int, timeout: float = 30.0) -> int:
        """SIGTERM, as a deploy does; returns the exit status."""
        replica = self.replicas[index]
        replica.process.send_signal(signal.SIGTERM)
        status = replica.process.wait(timeout)
        self._forget(replica)
        return status

    def restart(self, index: int) -> ServerProcess:
        """A graceful stop, then the same replica again on the same port."""
        self.stop(index)
        return self.start(index)

    def _forget(self, replica: Replica) -> None:
        replica._exit.close()
        replica._exit = ExitStack()
        replica.server = None
        replica.restarts += 1

    # --- clients -------------------------------------------------------------------

    def addresses(self, home: int = 0) -> str:
        """Every replica's address, ``home`` first, then round the ring."""
        count = len(self.replicas)
        return ",".join(self.replicas[(home + i) % count].address for i in range(count))

    def runner(
        self, name: str, home: int, *args: str
    ) -> AbstractContextManager[subprocess.Popen[str]]:
        """A ``dispatcher-runner`` that knows every replica and starts at ``home``;
        stopped (SIGTERM) when the cluster closes."""
        return runner_process(self.addresses(home), name, self.workdir, *args)

    def start_runners(
        self, names: Sequence[tuple[str, int]], *args: str
    ) -> list[subprocess.Popen[str]]:
        return [self._stack.enter_context(self.runner(n, home, *args)) for n, home in names]

    def any_up(self) -> Replica:
        for replica in self.replicas:
            if replica.server is not None and replica.process.poll() is None:
                return replica
        raise RuntimeError("no replica is running")

    @contextmanager
    def admin(self, index: int | None = None) -> Iterator[admin_pb2_grpc.AdminStub]:
        """An Admin client of replica ``index`` (default: the first one up)."""
        replica = self.any_up() if index is None else self.replicas[index]
        if replica.server is None:
            raise RuntimeError(f"replica {replica.index} is not running")
        with authenticated_sync_channel(replica.address, replica.server.tokens) as channel:
            yield admin_pb2_grpc.AdminStub(channel)
