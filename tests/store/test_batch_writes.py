"""Batch writes of the hot path (submits, claims, results): each row lands as given and
the ids handed back name the rows written, in order. SQLite takes its own path here
(plain rows, ids from its single writer), so both databases read back what was written."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, update

from dispatcher.domain.model import Flavor, JobSpec, RetryPolicy
from dispatcher.domain.states import JobState, Outcome
from dispatcher.store import events as event_store
from dispatcher.store import flavors as flavor_store
from dispatcher.store import jobs as store
from dispatcher.store import reports as report_store
from dispatcher.store.database import Database
from dispatcher.store.executions import executions_of
from dispatcher.store.tables import job_events, jobs

NOW = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=UTC)


def _spec(n: int) -> JobSpec:
    return JobSpec(
        platform="linux/amd64",
        command=("make", f"target-{n}"),
        labels=frozenset({"big", f"l{n}"}),
        payload=bytes([n]) * 3,
        priority=n,
        coalesce_keys=frozenset({f"repo-{n}"}),
        dedupe_key=f"d{n}" if n % 2 else "",
        origin_time=NOW - timedelta(minutes=n),
        retry=RetryPolicy(max_attempts=3, initial_delay=timedelta(seconds=n + 1)),
        max_wait=timedelta(hours=1) if n % 2 else None,
    )


def test_inserted_jobs_read_back_as_given_under_the_ids_returned(db: Database) -> None:
    with db.transaction() as conn:
        first = store.insert_jobs(
            conn, [store.NewJob(_spec(n), JobState.QUEUED) for n in range(3)], NOW
        )
        # The newest row goes: the next batch's ids are taken again from below it.
        conn.execute(delete(jobs).where(jobs.c.id == first[-1]))
        second = store.insert_jobs(
            conn, [store.NewJob(_spec(n), JobState.NOTICED) for n in range(3, 6)], NOW
        )
    assert len(set(first[:2] + second)) == 5
    with db.transaction() as conn:
        read = store.get_jobs(conn, first[:2] + second)
        labels = {
            row.job_id: row.label
            for row in conn.execute(
                select(store.job_labels).where(store.job_labels.c.label.like("l%"))
            )
        }
    for n, job_id in zip([0, 1, 3, 4, 5], first[:2] + second, strict=True):
        job = read[job_id]
        spec = _spec(n)
        assert job.spec.command == spec.command
        assert job.spec.labels == spec.labels
        assert job.spec.payload == spec.payload
        assert job.spec.priority == n
        assert job.spec.coalesce_keys == spec.coalesce_keys
        assert job.spec.dedupe_key == spec.dedupe_key
        assert job.spec.origin_time == spec.origin_time
        assert job.spec.retry == spec.retry
        assert job.spec.max_wait == spec.max_wait
        assert job.spec.not_before == NOW
        assert job.created_at == NOW
        assert job.state is (JobState.QUEUED if n < 3 else JobState.NOTICED)
        assert labels[job_id] == f"l{n}"


def test_a_claim_and_its_result_write_executions_moves_and_events(db: Database) -> None:
    with db.transaction() as conn:
        ids = store.insert_jobs(
            conn, [store.NewJob(_spec(n), JobState.QUEUED) for n in range(2)], NOW
        )
        claims = [
            store.NewExecution(job_id, 1, f"r{i}", None, None, f"runner:r{i}")
            for i, job_id in enumerate(reversed(ids))
        ]
        execution_ids = store.claim_queued(conn, claims, NOW, event="claimed")
    later = NOW + timedelta(seconds=5)
    with db.transaction() as conn:
        for job_id, execution_id in zip(reversed(ids), execution_ids, strict=True):
            (execution,) = executions_of(conn, job_id)
            assert execution.id == execution_id
        jobs_now = store.get_jobs(conn, ids)
        assert {j.state for j in jobs_now.values()} == {JobState.BUILDING}
        done = [
            report_store.Finished(
                execution_id=execution_ids[0],
                job_id=ids[1],
                outcome=Outcome.SUCCEEDED,
                state=JobState.SUCCEEDED,
                info="built",
                logtail=None,
                result=b"ok",
            )
        ]
        assert report_store.finish(conn, done, later) == 1
        # A second report of the same end changes nothing: the compare-and-set holds.
        assert report_store.finish(conn, done, later) == 0
    with db.transaction() as conn:
        ended = store.get_jobs(conn, ids)
        kinds = [
            (r.job_id, r.kind, r.execution_id)
            for r in conn.execute(select(job_events).order_by(job_events.c.id))
        ]
        (execution,) = executions_of(conn, ids[1])
        events = event_store.events_of(conn, ids[1])
    assert ended[ids[1]].state is JobState.SUCCEEDED
    assert ended[ids[1]].finished_at == later
    assert ended[ids[0]].state is JobState.BUILDING
    assert execution.outcome is Outcome.SUCCEEDED
    assert execution.result == b"ok"
    assert execution.finished_at == later
    assert kinds == [(ids[1], "claimed", execution_ids[0]), (ids[0], "claimed", execution_ids[1])]
    assert events[0].at == NOW


def test_a_fence_tells_whether_its_job_holds_coalesce_keys(db: Database) -> None:
    keyed = _spec(1)
    plain = JobSpec(platform="linux/amd64", command=("true",))
    with db.transaction() as conn:
        ids = store.insert_jobs(
            conn, [store.NewJob(keyed, JobState.QUEUED), store.NewJob(plain, JobState.QUEUED)], NOW
        )
        claims = [store.NewExecution(job_id, 1, "r", None, None, "runner:r") for job_id in ids]
        execution_ids = store.claim_queued(conn, claims, NOW, event="claimed")
        fences = report_store.fences(conn, execution_ids)
    assert fences[execution_ids[0]].holds_keys is True
    assert fences[execution_ids[1]].holds_keys is False
    assert [fences[e].job_id for e in execution_ids] == ids
    assert {fences[e].state for e in execution_ids} == {JobState.BUILDING}


def test_a_claim_reads_each_job_as_a_lookup_by_id_does(db: Database) -> None:
    """The claim's statement names a job's flavor by a subquery, a lookup by id by a
    join; both read every field the same."""
    with db.transaction() as conn:
        flavor = flavor_store.insert_flavor(
            conn, Flavor("big-builder", "linux/amd64", frozenset({"big"})), NOW
        )
        ids = store.insert_jobs(
            conn,
            [
                store.NewJob(_spec(n), JobState.QUEUED, info=f"waiting {n}", flavor_id=flavor)
                for n in (1, 2)
            ],
            NOW,
        )
        conn.execute(update(jobs).where(jobs.c.id == ids[1]).values(failures=2, losses=1))
        claimable = store.claimable_jobs(conn, "linux/amd64", frozenset({"big", "l1", "l2"}), 5)
        by_id = store.get_jobs(conn, ids)
    assert [job.id for job in claimable] == [ids[1], ids[0]]  # higher priority first
    assert claimable == [by_id[ids[1]], by_id[ids[0]]]
    job = claimable[0]
    assert (job.flavor, job.info, job.failures, job.losses) == ("big-builder", "waiting 2", 2, 1)
    assert job.spec == replace(_spec(2), not_before=NOW)


# What a batch's text must carry unchanged: PostgreSQL gets each column as the text of
# one array (store/sql.py), where quotes, backslashes, braces, commas and the word NULL
# mean something.
AWKWARD = [
    'say "hi"',
    "C:\\path\\to\\",
    "{a,b}",
    "NULL",
    "",
    " spaced ",
    "x,y",
    "emoji \U0001f680 and ümlaut",
    "\\x41",
]


def _awkward_spec(n: int, text: str) -> JobSpec:
    return JobSpec(
        platform="linux/amd64",
        command=(text, f"{text}-{n}"),
        labels=frozenset({text or "empty", f"l{n}"}),
        payload=text.encode() + bytes([0, 92, 34, 255]),
        coalesce_keys=frozenset({f"{text}-key"}),
        subject=text,
        not_before=NOW + timedelta(microseconds=n),
    )


def _write_awkward(db: Database) -> tuple[list[int], dict[int, list[tuple[str, str]]]]:
    specs = [_awkward_spec(n, text) for n, text in enumerate(AWKWARD)]
    events = [
        {"kind": "submitted", "to_state": "QUEUED", "actor": text or "-", "cause": text, "at": NOW}
        for text in AWKWARD
    ]
    with db.transaction() as conn:
        ids = store.insert_jobs(
            conn, [store.NewJob(s, JobState.QUEUED, info=s.subject) for s in specs], NOW, events
        )
    with db.transaction() as conn:
        logged = {
            job_id: [(e.actor, e.cause) for e in event_store.events_of(conn, job_id)]
            for job_id in ids
        }
    return ids, logged


def _check_awkward(db: Database, ids: list[int], logged: dict[int, list[tuple[str, str]]]) -> None:
    assert ids == sorted(ids)
    with db.transaction() as conn:
        read = store.get_jobs(conn, ids)
        event_ids = [e.id for job_id in ids for e in event_store.events_of(conn, job_id)]
    for n, (job_id, text) in enumerate(zip(ids, AWKWARD, strict=True)):
        job = read[job_id]
        spec = _awkward_spec(n, text)
        assert job.spec.command == spec.command
        assert job.spec.labels == spec.labels
        assert job.spec.payload == spec.payload
        assert job.spec.coalesce_keys == spec.coalesce_keys
        assert job.spec.subject == text
        assert job.spec.not_before == spec.not_before
        assert job.info == text
        assert logged[job_id] == [(text or "-", text)]
    # One event per job, written in the order of the jobs.
    assert event_ids == sorted(event_ids)


def test_awkward_text_in_a_batch_reads_back_as_given(db: Database) -> None:
    ids, logged = _write_awkward(db)
    _check_awkward(db, ids, logged)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_awkward_text_in_a_batch_reads_back_through_each_driver(db_of_driver: Database) -> None:
    ids, logged = _write_awkward(db_of_driver)
    _check_awkward(db_of_driver, ids, logged)
