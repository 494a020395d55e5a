"""Why a job waiting for a distributor instance is not running (SPEC §10 explain): its
backend is down, or the instance's parallelism is in use by the jobs ahead of it."""

from __future__ import annotations

from sqlalchemy import Connection

from dispatcher.domain.model import Job, Reason
from dispatcher.domain.validation import RUNNER_POOL
from dispatcher.store import distributions as store
from dispatcher.store import jobs as job_store


def on_distributor(job: Job) -> bool:
    return job.spec.distributor not in ("", RUNNER_POOL)


def queued_on_distributor(conn: Connection, job: Job) -> list[Reason]:
    name = job.spec.distributor
    reasons = [
        Reason("coalesce", f"waiting behind job {holder} on coalesce key {key!r}", None, holder)
        for key, holder in job_store.coalesce_holders(conn, job.id)
    ]
    health = store.get_health(conn, name)
    if not health.up and health.down_since is not None:
        probe = health.next_probe_at.isoformat() if health.next_probe_at else "soon"
        reasons.append(
            Reason(
                "backend-down",
                f"backend down since {health.down_since.isoformat()}: distributor {name} "
                f"({health.cause}); next probe at {probe}",
                health.down_since,
            )
        )
    running = store.open_count(conn, name)
    if running:
        reasons.append(Reason("busy", f"distributor {name} is running {running} execution(s)"))
    ahead = store.queued_count(conn, name) - 1
    if ahead > 0:
        reasons.append(Reason("queue", f"up to {ahead} job(s) of distributor {name} queued too"))
    if not reasons:
        reasons.append(
            Reason("assigning", f"distributor {name} can take it; it is being handed over")
        )
    return reasons
