"""Admission: what state a new job starts in, and why (SPEC §5.1, §5.4, §5.5, §5.6).

One function decides for submissions and for the jobs schedules make, in the caller's
transaction, in this order: replay window, flavor, dedupe key, back-off, due time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from dispatcher.domain.model import Flavor, Job, JobSpec
from dispatcher.domain.rules import SchedulingRules, choose_flavor, replay_refusal
from dispatcher.domain.states import (
    DUPLICATE_OF_STATE,
    SUBMIT_NOT_FOR_US,
    SUBMIT_NOTICED,
    SUBMIT_QUEUED,
    JobState,
    Transition,
)
from dispatcher.lifecycle.known_flavors import KnownFlavors
from dispatcher.lifecycle.messages import WAKE, announce
from dispatcher.lifecycle.transitions import event_row
from dispatcher.store import backoffs as backoff_store
from dispatcher.store import jobs as store


@dataclass(frozen=True)
class _Decision:
    transition: Transition
    cause: str = ""
    flavor_id: int | None = None
    duplicate_of: int | None = None


class Admission:
    def __init__(self, rules: SchedulingRules, rng: random.Random, flavors: KnownFlavors) -> None:
        self._rules = rules
        self._rng = rng
        self._flavors = flavors

    def admit(
        self,
        conn: Connection,
        specs: Sequence[JobSpec],
        now: datetime,
        *,
        actor: str,
        schedule_id: int | None = None,
        wake: bool = True,
    ) -> list[Job]:
        """Insert one job per spec, each in the state the rules give it, with its event.
        Queued jobs wake every replica's assigner, unless ``wake`` is off: the caller
        then announces what its own claim left in the queue."""
        new, events, flavor_names = self._decide_all(conn, specs, now, actor, schedule_id)
        ids = store.insert_jobs(conn, new, now, events)
        if wake and any(n.state is JobState.QUEUED for n in new):
            announce(conn, WAKE)  # any replica's runners may take them
        if schedule_id is not None:
            found = store.get_jobs(conn, ids)  # with the schedule's name
            return [found[i] for i in ids]
        return [
            store.as_inserted(n, i, now, flavor=flavor_names.get(n.flavor_id or 0, ""))
            for n, i in zip(new, ids, strict=True)
        ]

    def admit_one_bound(
        self,
        conn: Connection,
        spec: JobSpec,
        now: datetime,
        *,
        actor: str,
        sessions_for: Callable[[JobSpec], list[int]],
        claim_event: str,
    ) -> tuple[Job, store.BoundAtInsert | None]:
        """Admit one job (PostgreSQL) and, when the rules queue it, bind it in the same
        statement to the first of ``sessions_for(spec)`` that may take work (see
        :func:`store.insert_job_bound`; not for a job with coalesce keys). Returns the
        job as admitted (QUEUED when it was bound: the caller makes it the claim's) and
        what bound it, if anything. Announces nothing: the caller wakes the assigners
        for a queued job left unbound."""
        [new], [event], flavor_names = self._decide_all(conn, [spec], now, actor, None)
        flavor = flavor_names.get(new.flavor_id or 0, "")
        sessions = sessions_for(spec) if new.state is JobState.QUEUED else []
        if not sessions:
            [job_id] = store.insert_jobs(conn, [new], now, [event])
            return store.as_inserted(new, job_id, now, flavor=flavor), None
        bound = store.insert_job_bound(
            conn, new, event, now, session_ids=sessions, claim_event=claim_event
        )
        job = store.as_inserted(new, bound.job_id, now, flavor=flavor)
        return job, bound if bound.execution_id is not None else None

    def _decide_all(
        self,
        conn: Connection,
        specs: Sequence[JobSpec],
        now: datetime,
        actor: str,
        schedule_id: int | None,
    ) -> tuple[list[store.NewJob], list[dict[str, Any]], dict[int, str]]:
        """The rows to insert for ``specs``, their events (job ids still to fill in),
        and the names of the flavors they may name, by id."""
        flavors = self._flavors.of_platforms(conn, {s.platform for s in specs})
        # Dedupe keys of jobs admitted earlier in this batch that are still unfinished.
        batch_keys: dict[str, int] = {}
        decisions = []
        for index, spec in enumerate(specs):
            decision = self._decide(conn, spec, now, flavors[spec.platform], batch_keys)
            decisions.append(decision)
            if spec.dedupe_key and not decision.transition.target.terminal:
                batch_keys.setdefault(spec.dedupe_key, index)
        new = [
            store.NewJob(
                spec=spec,
                state=d.transition.target,
                info=d.cause,
                flavor_id=d.flavor_id,
                schedule_id=schedule_id,
                duplicate_of=d.duplicate_of,
            )
            for spec, d in zip(specs, decisions, strict=True)
        ]
        events = [
            event_row(
                0,  # the job's id, once it has one
                d.transition.event,
                now,
                actor=actor,
                cause=d.cause,
                to_state=d.transition.target,
            )
            for d in decisions
        ]
        names = {i: f.name for platform in flavors.values() for i, f in platform}
        return new, events, names

    def _decide(
        self,
        conn: Connection,
        spec: JobSpec,
        now: datetime,
        flavors: list[tuple[int, Flavor]],
        batch_keys: dict[str, int],
    ) -> _Decision:
        refusal = replay_refusal(self._rules, spec.origin_time, now)
        if refusal:
            return _Decision(SUBMIT_NOT_FOR_US, refusal)
        flavor_id = None
        waits: list[str] = []
        if flavors:
            chosen = choose_flavor((f for _, f in flavors), spec.platform, spec.labels, self._rng)
            if chosen is not None:
                flavor_id = next(i for i, f in flavors if f.name == chosen.name)
            else:
                disabled = [f.name for _, f in flavors if f.serves(spec.platform, spec.labels)]
                if not disabled:
                    return _Decision(SUBMIT_NOT_FOR_US, _no_flavor(spec, flavors))
                waits.append(f"its flavor {disabled[0]!r} is disabled")
        if spec.dedupe_key:
            key = spec.dedupe_key
            active = store.dedupe_active(conn, key)
            if active is not None:
                waits.append(f"waiting behind job {active} with dedupe key {key!r}")
            elif key in batch_keys:
                waits.append(f"waiting behind an earlier job of this batch with dedupe key {key!r}")
            else:
                original = store.dedupe_original(conn, key)
                if original is not None:
                    original_id, state = original
                    submit_move, _ = DUPLICATE_OF_STATE[state]
                    cause = (
                        f"duplicate of job {original_id} ({state.value}) with dedupe key {key!r}"
                    )
                    return _Decision(submit_move, cause, flavor_id, original_id)
        if spec.subject:
            backoff = backoff_store.active_backoff(conn, spec.subject, spec.process, now)
            if backoff is not None:
                waits.append(
                    f"back-off on {spec.subject}/{spec.process} until "
                    f"{backoff.until.isoformat()}: {backoff.cause}"
                )
        if spec.not_before is not None and spec.not_before > now:
            waits.append(f"not due until {spec.not_before.isoformat()}")
        if waits:
            return _Decision(SUBMIT_NOTICED, "; ".join(waits), flavor_id)
        return _Decision(SUBMIT_QUEUED, "", flavor_id)


def _no_flavor(spec: JobSpec, flavors: list[tuple[int, Flavor]]) -> str:
    labels = ", ".join(sorted(spec.labels)) or "none"
    names = ", ".join(sorted(f.name for _, f in flavors))
    return (
        f"no flavor serves platform {spec.platform} with labels [{labels}] "
        f"(flavors of the platform: {names})"
    )
