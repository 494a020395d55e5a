"""Explain (SPEC §10): the concrete reasons a waiting job is not running, read with the
same predicates that admission, the due loop and the claim use."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from dispatcher.domain.errors import InvalidInput, NotFound
from dispatcher.domain.model import Explanation, Job, Reason, Runner, RunnerState
from dispatcher.domain.states import JobState
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.waiting import on_distributor, queued_on_distributor
from dispatcher.store import backoffs as backoff_store
from dispatcher.store import flavors as flavor_store
from dispatcher.store import jobs as store
from dispatcher.store import runners as runner_store


class Explainer:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    async def explain(self, job_id: int) -> Explanation:
        if job_id <= 0:
            raise InvalidInput("id is required: a positive job id")

        def read(conn: Connection) -> Explanation:
            job = store.get_job(conn, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            now = self._ctx.clock.now()
            if job.state is JobState.NOTICED:
                reasons = _noticed(conn, job, now)
            elif job.state is JobState.QUEUED and on_distributor(job):
                reasons = queued_on_distributor(conn, job)
            elif job.state is JobState.QUEUED:
                reasons = _queued(conn, job, now)
            elif job.state is JobState.BUILDING and on_distributor(job):
                reasons = [
                    Reason("running", f"it is running on distributor {job.spec.distributor}")
                ]
            elif job.state is JobState.BUILDING:
                reasons = [Reason("running", f"it is running on runner {job.runner}")]
            else:
                why = f": {job.info}" if job.info else ""
                reasons = [Reason("finished", f"it is {job.state.value}{why}")]
            return Explanation(job.id, job.state, tuple(reasons))

        return await self._ctx.db.run(read)


def _noticed(conn: Connection, job: Job, now: datetime) -> list[Reason]:
    spec = job.spec
    reasons = []
    if spec.not_before is not None and spec.not_before > now:
        reasons.append(
            Reason("not-due", f"not due until {spec.not_before.isoformat()}", spec.not_before)
        )
    if spec.subject:
        backoff = backoff_store.active_backoff(conn, spec.subject, spec.process, now)
        if backoff is not None:
            reasons.append(
                Reason(
                    "back-off",
                    f"back-off on {spec.subject}/{spec.process} until "
                    f"{backoff.until.isoformat()}: {backoff.cause}",
                    backoff.until,
                )
            )
    if spec.dedupe_key:
        ahead = store.dedupe_leader(conn, spec.dedupe_key) or store.dedupe_active(
            conn, spec.dedupe_key
        )
        if ahead is not None and ahead != job.id:
            reasons.append(
                Reason(
                    "dedupe",
                    f"waiting behind job {ahead} on dedupe key {spec.dedupe_key!r}",
                    blocking_job_id=ahead,
                )
            )
    if not job.flavor:
        flavors = [f for _, f in flavor_store.list_flavors(conn, spec.platform)]
        serving = [f for f in flavors if f.serves(spec.platform, spec.labels)]
        if serving and not any(f.enabled for f in serving):
            names = ", ".join(f.name for f in serving)
            reasons.append(Reason("flavor-disabled", f"flavor disabled: {names}"))
        elif flavors and not serving:
            reasons.append(
                Reason("no-flavor", f"no flavor serves platform {spec.platform} with its labels")
            )
    if not reasons:
        reasons.append(Reason("due", "ready; the dispatcher queues it on its next pass"))
    return reasons


def _queued(conn: Connection, job: Job, now: datetime) -> list[Reason]:
    reasons = [
        Reason("coalesce", f"waiting behind job {holder} on coalesce key {key!r}", None, holder)
        for key, holder in store.coalesce_holders(conn, job.id)
    ]
    spec = job.spec
    matching = [
        r
        for r in runner_store.list_runners(conn)
        if r.platform == spec.platform and spec.labels <= r.labels
    ]
    usable = [r for r in matching if _usable(r, now)]
    if not usable:
        labels = ", ".join(sorted(spec.labels)) or "none"
        detail = "; ".join(_why_not(r, now) for r in matching)
        text = f"no online runner with platform {spec.platform} and labels [{labels}]"
        reasons.append(Reason("no-runner", f"{text}" + (f" ({detail})" if detail else "")))
    else:
        free = sum(max(0, r.capacity - r.building) for r in usable)
        if free == 0:
            reasons.append(Reason("busy", f"all {len(usable)} matching runner(s) are at capacity"))
    ahead = store.jobs_ahead(conn, job)
    if ahead:
        reasons.append(Reason("queue", f"{ahead} job(s) ahead of it in the queue"))
    if not reasons:
        reasons.append(Reason("assigning", "a runner can take it; it is being assigned"))
    return reasons


def _usable(runner: Runner, now: datetime) -> bool:
    quarantined = runner.quarantined_until is not None and runner.quarantined_until > now
    return runner.state is RunnerState.ONLINE and not quarantined


def _why_not(runner: Runner, now: datetime) -> str:
    if runner.quarantined_until is not None and runner.quarantined_until > now:
        return f"{runner.name} quarantined until {runner.quarantined_until.isoformat()}"
    return f"{runner.name} is {runner.state.value}"
