"""What the end-to-end fault tests share: submitting no-op batches over the Admin API,
waiting for a condition while timing it, and whether a process still runs."""

from __future__ import annotations

import time
from collections.abc import Callable

from dispatcher.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.support.eventually import eventually_sync


def submit(
    admin: admin_pb2_grpc.AdminStub,
    platform: str,
    command: list[str],
    count: int,
    policy: int = types_pb2.ON_LOST_POLICY_REQUEUE,
) -> list[int]:
    """Submit ``count`` jobs running ``command`` on ``platform`` in one batch; their ids."""
    specs = [
        types_pb2.JobSpec(platform=platform, command=command, on_lost=policy)  # type: ignore[arg-type]
        for _ in range(count)
    ]
    response = admin.SubmitJobs(admin_pb2.SubmitJobsRequest(specs=specs))
    return [r.job.id for r in response.results]


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``predicate`` held (fails past ``timeout``)."""
    started = time.monotonic()
    eventually_sync(predicate, timeout=timeout, interval=interval)
    return time.monotonic() - started


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        # Gone between open and read: the kernel answers ESRCH then.
        return False
