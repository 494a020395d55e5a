"""PostgreSQL's one-statement submit for an idle farm (store.insert_job_bound): the job,
its event, its labels and, when a session may take work, its first execution, the move
to BUILDING and the claim's event, all as the claim would have left them; and nothing
of the binding when no session may take work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, event, select

from dispatcher.domain.model import JobSpec, RunnerHello, RunnerState
from dispatcher.domain.states import CLAIM, SUBMIT_QUEUED, JobState
from dispatcher.lifecycle.transitions import event_row
from dispatcher.store import jobs as store
from dispatcher.store import runners as runner_store
from dispatcher.store.database import Database
from dispatcher.store.events import events_of
from dispatcher.store.executions import executions_of
from dispatcher.store.tables import executions, job_labels

POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
NOW = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)
SPEC = JobSpec(
    platform="linux/amd64",
    command=("make", "all"),
    labels=frozenset({"big", "gpu"}),
    max_run=timedelta(minutes=5),
)


def _session(conn: Connection, runner: str) -> int:
    hello = RunnerHello(runner, "linux/amd64", frozenset({"big", "gpu"}), 2)
    runner_store.upsert_runner(conn, hello, RunnerState.ONLINE, NOW)
    return runner_store.open_session(conn, runner, "replica-1", f"hash-{runner}", NOW)


def _insert(conn: Connection, session_ids: list[int]) -> store.BoundAtInsert:
    event = event_row(0, SUBMIT_QUEUED.event, NOW, actor="me", to_state=JobState.QUEUED)
    return store.insert_job_bound(
        conn,
        store.NewJob(SPEC, JobState.QUEUED),
        event,
        NOW,
        session_ids=session_ids,
        claim_event=CLAIM.event,
    )


@POSTGRESQL
def test_a_job_bound_at_its_insert_reads_back_as_a_claim_leaves_it(
    db_of_driver: Database,
) -> None:
    db = db_of_driver
    with db.transaction() as conn:
        session_id = _session(conn, "r1")
        bound = _insert(conn, [session_id])
    assert bound.session_id == session_id
    assert bound.runner == "r1"
    assert bound.execution_id is not None
    with db.transaction() as conn:
        job = store.get_job(conn, bound.job_id)
        [execution] = executions_of(conn, bound.job_id)
        deadline = conn.execute(
            select(executions.c.deadline_at).where(executions.c.id == bound.execution_id)
        ).scalar_one()
        events = events_of(conn, bound.job_id)
        labels = set(
            conn.execute(
                select(job_labels.c.label).where(job_labels.c.job_id == bound.job_id)
            ).scalars()
        )
    assert job is not None
    assert job.state is JobState.BUILDING
    assert job.attempt == 1
    assert job.current_execution_id == bound.execution_id
    assert job.spec.command == SPEC.command
    assert job.spec.labels == SPEC.labels
    assert (execution.id, execution.number, execution.runner) == (bound.execution_id, 1, "r1")
    assert execution.session_id == session_id
    assert execution.started_at == NOW
    assert execution.finished_at is None
    assert deadline == NOW + SPEC.max_run
    # The submit first, then the claim: history reads in this order.
    assert [(e.kind, e.from_state, e.to_state, e.execution_id) for e in events] == [
        (SUBMIT_QUEUED.event, None, JobState.QUEUED, None),
        (CLAIM.event, JobState.QUEUED, JobState.BUILDING, bound.execution_id),
    ]
    assert [e.actor for e in events] == ["me", "runner:r1"]
    assert labels == {"big", "gpu"}


@POSTGRESQL
def test_the_first_session_in_the_given_order_that_may_take_work_gets_the_job(
    db: Database,
) -> None:
    with db.transaction() as conn:
        closed = _session(conn, "closed")
        runner_store.close_session(conn, closed, "gone", NOW)
        held = _session(conn, "held")
        runner_store.quarantine(conn, "held", NOW + timedelta(hours=1))
        first, second = _session(conn, "first"), _session(conn, "second")
        bound = _insert(conn, [closed, held, second, first])
    assert (bound.session_id, bound.runner) == (second, "second")


@POSTGRESQL
def test_with_no_session_that_may_take_work_the_job_waits_in_the_queue(db: Database) -> None:
    with db.transaction() as conn:
        closed = _session(conn, "closed")
        runner_store.close_session(conn, closed, "gone", NOW)
        held = _session(conn, "held")
        runner_store.quarantine(conn, "held", NOW + timedelta(hours=1))
        bound = _insert(conn, [closed, held])
    assert (bound.execution_id, bound.session_id, bound.runner) == (None, None, None)
    with db.transaction() as conn:
        job = store.get_job(conn, bound.job_id)
        assert executions_of(conn, bound.job_id) == []
        events = events_of(conn, bound.job_id)
        claimable = store.claimable_jobs(conn, SPEC.platform, SPEC.labels, 10)
    assert job is not None
    assert (job.state, job.attempt, job.current_execution_id) == (JobState.QUEUED, 0, None)
    assert [(e.kind, e.to_state) for e in events] == [(SUBMIT_QUEUED.event, JobState.QUEUED)]
    # Its labels were written: a runner with them finds it.
    assert [j.id for j in claimable] == [bound.job_id]


def test_sqlite_has_no_bound_insert(db: Database) -> None:
    with db.transaction() as conn:
        assert store.binds_at_insert(conn) is (conn.dialect.name == "postgresql")


@POSTGRESQL
def test_each_connection_prepares_the_statement_once_and_keeps_it(db: Database) -> None:
    """Prepared once per connection: later transactions, one rolled back among them,
    only EXECUTE it; a new connection (the pool's were dropped) prepares it again."""
    seen: list[str] = []
    connections: set[int] = set()

    def record(conn: Connection, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement.split(" ", 1)[0])
        connections.add(id(conn.connection.dbapi_connection))

    with db.transaction() as conn:
        session_id = _session(conn, "r1")
    event.listen(db.engine, "before_cursor_execute", record)
    try:
        ids = []
        for rollback in (False, True, False):
            with db.engine.connect() as conn, conn.begin() as transaction:
                ids.append(_insert(conn, [session_id]).job_id)
                if rollback:
                    transaction.rollback()
        assert seen.count("PREPARE") == len(connections) == 1
        db.engine.dispose()
        with db.transaction() as conn:
            ids.append(_insert(conn, [session_id]).job_id)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert seen.count("PREPARE") == 2
    assert seen.count("EXECUTE") == 4
    with db.transaction() as conn:
        found = store.get_jobs(conn, ids)
    assert sorted(found) == sorted([ids[0], ids[2], ids[3]])  # the rolled back one is gone
    assert {job.state for job in found.values()} == {JobState.BUILDING}
