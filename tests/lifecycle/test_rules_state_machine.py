"""A hypothesis state machine over the real use cases and a real database: random
submits, runner connects and disconnects, results, cancels, flavor changes and clock
advances. After every step it checks what SPEC §4-§5 promise: capacity never exceeded;
never two BUILDING jobs sharing a coalesce key; terminal states never change; every
transition is in the table and has its event; pressure equals its definition."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import delete, select

from dispatcher.domain.errors import Conflict, NotFound
from dispatcher.domain.model import Flavor, JobSpec, ResultReport, RetryPolicy
from dispatcher.domain.states import LEGAL_MOVES, UNFINISHED_STATES, JobState, OnLostPolicy, Outcome
from dispatcher.lifecycle.jobs import Demand
from dispatcher.store import migrate
from dispatcher.store.database import Database
from dispatcher.store.tables import (
    executions,
    flavors,
    job_coalesce_keys,
    job_events,
    jobs,
    metadata,
)
from tests.support.services import Services, services

LINUX = "linux/x86_64"
LABELS = ("gpu", "kvm")
KEYS = ("repo:a", "repo:b", "repo:c")
RUNNERS = ("r1", "r2", "r3")
FLAVORS = {"small": frozenset[str](), "gpu": frozenset({"gpu"}), "all": frozenset(LABELS)}


class SchedulingMachine(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.db = Database(url)
        migrate.upgrade(self.db)
        with self.db.transaction() as conn:
            for table in reversed(metadata.sorted_tables):
                if table.name != "alembic_version":
                    conn.execute(delete(table))
        self.context = services(self.db)
        self.svc: Services = self.run(self.context.__aenter__())
        self.demands: dict[str, Demand] = {}
        self.held: dict[int, set[int]] = defaultdict(set)  # session id -> execution ids
        self.finished: dict[int, JobState] = {}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.context.__aexit__(None, None, None))
        self.db.close()
        self.loop.close()

    # --- steps --------------------------------------------------------------------

    @rule(
        labels=st.frozensets(st.sampled_from(LABELS)),
        keys=st.frozensets(st.sampled_from(KEYS), max_size=2),
        dedupe=st.sampled_from(["", "tag:1", "tag:2"]),
        priority=st.integers(0, 2),
        delay=st.sampled_from([0, 0, 30]),
        on_lost=st.sampled_from(list(OnLostPolicy)),
        attempts=st.integers(1, 3),
    )
    def submit(
        self,
        labels: frozenset[str],
        keys: frozenset[str],
        dedupe: str,
        priority: int,
        delay: int,
        on_lost: OnLostPolicy,
        attempts: int,
    ) -> None:
        spec = JobSpec(
            platform=LINUX,
            command=("true",),
            labels=labels,
            coalesce_keys=keys,
            dedupe_key=dedupe,
            priority=priority,
            not_before=self.svc.clock.now() + timedelta(seconds=delay) if delay else None,
            on_lost=on_lost,
            retry=RetryPolicy(max_attempts=attempts, initial_delay=timedelta(seconds=5)),
        )
        self.run(self.svc.jobs.submit([spec], actor="test"))

    @rule(
        name=st.sampled_from(RUNNERS),
        labels=st.frozensets(st.sampled_from(LABELS)),
        capacity=st.integers(1, 3),
    )
    def connect(self, name: str, labels: frozenset[str], capacity: int) -> None:
        old = self.demands.pop(name, None)
        if old is not None:
            self.run(self.svc.sessions.close(old.session_id, "replaced"))
            self.held.pop(old.session_id, None)
        self.demands[name] = self.run(self.svc.connect(name, labels=labels, capacity=capacity))

    @rule(name=st.sampled_from(RUNNERS))
    def disconnect(self, name: str) -> None:
        demand = self.demands.pop(name, None)
        if demand is not None:
            self.run(self.svc.sessions.close(demand.session_id, "stream died"))
            self.held.pop(demand.session_id, None)

    @rule()
    def claim(self) -> None:
        asks = []
        for demand in self.demands.values():
            free = demand.slots - len(self.held[demand.session_id])
            if free > 0:
                asks.append(
                    Demand(demand.session_id, demand.runner, demand.platform, demand.labels, free)
                )
        for assignment in self.run(self.svc.jobs.claim(asks)):
            self.held[assignment.session_id].add(assignment.execution_id)

    @rule(
        data=st.data(),
        outcome=st.sampled_from([Outcome.SUCCEEDED, Outcome.FAILED, Outcome.IRRECOVERABLE]),
    )
    def report(self, data: st.DataObject, outcome: Outcome) -> None:
        choices = [(s, e) for s, held in self.held.items() for e in held]
        if not choices:
            return
        session_id, execution_id = data.draw(st.sampled_from(sorted(choices)))
        runner = next(d.runner for d in self.demands.values() if d.session_id == session_id)
        self.run(
            self.svc.executions.report_result(
                session_id, runner, ResultReport(execution_id, outcome, outcome.value)
            )
        )
        self.held[session_id].discard(execution_id)

    @rule(job=st.integers(1, 40))
    def cancel(self, job: int) -> None:
        with contextlib.suppress(NotFound):  # a job id not submitted yet
            self.run(self.svc.jobs.cancel(job, actor="test", reason="random cancel"))

    @rule(
        name=st.sampled_from(sorted(FLAVORS)),
        action=st.sampled_from(["add", "enable", "disable", "delete"]),
    )
    def flavor(self, name: str, action: str) -> None:
        flavors_ = self.svc.flavors
        try:
            if action == "add":
                self.run(
                    flavors_.add(Flavor(name, LINUX, FLAVORS[name], priority=len(name)), actor="t")
                )
            elif action == "delete":
                self.run(flavors_.delete(name, actor="t"))
            else:
                self.run(flavors_.set_enabled(name, action == "enable", actor="t"))
        except (Conflict, NotFound):
            pass  # added twice, or changed before it was added

    @rule(seconds=st.sampled_from([1, 10, 40]))
    def advance(self, seconds: int) -> None:
        self.svc.clock.advance(timedelta(seconds=seconds))
        for demand in self.demands.values():
            self.run(self.svc.executions.heartbeat(demand.session_id, []))
        report = self.run(self.svc.sessions.sweep())
        for order in report.cancels:
            self.held[order.session_id].discard(order.execution_id)
        self.run(self.svc.jobs.queue_due())

    # --- invariants ---------------------------------------------------------------

    @invariant()
    def capacity_is_never_exceeded(self) -> None:
        with self.db.transaction() as conn:
            open_by_session: dict[int, int] = defaultdict(int)
            for (session_id,) in conn.execute(
                select(executions.c.session_id).where(executions.c.finished_at.is_(None))
            ):
                open_by_session[session_id] += 1
        capacity = {d.session_id: d.slots for d in self.demands.values()}
        for session_id, count in open_by_session.items():
            if session_id in capacity:
                assert count <= capacity[session_id], (session_id, count)

    @invariant()
    def no_two_building_jobs_share_a_coalesce_key(self) -> None:
        with self.db.transaction() as conn:
            rows = conn.execute(
                select(job_coalesce_keys.c.key, jobs.c.id)
                .select_from(job_coalesce_keys.join(jobs, jobs.c.id == job_coalesce_keys.c.job_id))
                .where(jobs.c.state == JobState.BUILDING.value)
            ).all()
        keys = [key for key, _ in rows]
        assert len(keys) == len(set(keys)), rows

    @invariant()
    def terminal_states_never_change_and_moves_are_legal(self) -> None:
        with self.db.transaction() as conn:
            states = dict(conn.execute(select(jobs.c.id, jobs.c.state)).all())
            events = conn.execute(
                select(job_events.c.job_id, job_events.c.from_state, job_events.c.to_state)
                .where(job_events.c.to_state.is_not(None))
                .order_by(job_events.c.id)
            ).all()
        last: dict[int, str] = {}
        for job_id, from_state, to_state in events:
            move = (JobState(from_state) if from_state else None, JobState(to_state))
            assert move in LEGAL_MOVES, move
            assert last.get(job_id) == from_state, (job_id, last.get(job_id), from_state)
            last[job_id] = to_state
        for job_id, state in states.items():
            assert last[job_id] == state, (job_id, state)  # every move has its event
            if job_id in self.finished:
                assert self.finished[job_id].value == state
            elif JobState(state).terminal:
                self.finished[job_id] = JobState(state)

    @invariant()
    def pressure_equals_its_definition(self) -> None:
        with self.db.transaction() as conn:
            names = dict(conn.execute(select(flavors.c.id, flavors.c.name)).all())
            minimums = dict(conn.execute(select(flavors.c.name, flavors.c.min_pressure)).all())
            counts: dict[str, int] = defaultdict(int)
            for flavor_id, state in conn.execute(select(jobs.c.flavor_id, jobs.c.state)):
                if flavor_id is not None and JobState(state) in UNFINISHED_STATES:
                    counts[names[flavor_id]] += 1
        pressures = {p.flavor: p.value for p in self.run(self.svc.flavors.pressures())}
        assert pressures == {name: max(counts[name], minimums[name]) for name in names.values()}


@pytest.mark.parametrize("examples", [20])
def test_the_rules_hold_under_random_operations(empty_database_url: str, examples: int) -> None:
    postgres = empty_database_url.startswith("postgresql")
    run_state_machine_as_test(
        lambda: SchedulingMachine(empty_database_url),
        settings=settings(
            max_examples=examples // 2 if postgres else examples,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
