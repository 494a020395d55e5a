"""What the use cases tell the other replicas (lifecycle/messages.py): one wake-up per
transaction that queued jobs or freed a coalesce key, and the cancels, drains and
evictions that a replica holding the stream must carry out. PostgreSQL only (SQLite is
one process: nothing is sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Connection

from dispatcher.domain.model import Flavor, JobSpec, ResultReport
from dispatcher.domain.states import Outcome
from dispatcher.lifecycle.fleet import Fleet
from dispatcher.lifecycle.messages import (
    FLAVORS_CHANGED,
    WAKE,
    CancelOrder,
    Message,
    RunnerDrained,
    SessionsEnded,
    decode,
    encode,
)
from dispatcher.store import notify
from dispatcher.store.database import Database
from tests.support.eventually import eventually
from tests.support.services import Services, services

LINUX = "linux/x86_64"
MARKER = '{"kind":"marker"}'


def test_every_message_survives_its_payload() -> None:
    for message in (
        WAKE,
        CancelOrder(3, 7, "not wanted"),
        RunnerDrained("r1", True, "maintenance"),
        RunnerDrained("r1", False),
        SessionsEnded((4, 5), "evicted"),
        FLAVORS_CHANGED,
    ):
        assert decode(encode(message)) == message


def test_a_message_of_an_unknown_kind_is_ignored() -> None:
    assert decode('{"kind":"from-a-newer-replica"}') is None
    assert decode("not json") is None
    assert decode('{"kind":"cancel","session":"x"}') is None


class Inbox:
    """Every message this test's listener heard, up to the marker it sends last."""

    def __init__(self) -> None:
        self.payloads: list[str] = []

    def payload(self, payload: str) -> None:
        self.payloads.append(payload)

    async def until_marker(self, db: Database) -> list[Message]:
        def mark(conn: Connection) -> None:
            notify.publish(conn, MARKER)

        await db.run(mark)
        await eventually(lambda: MARKER in self.payloads)
        heard = self.payloads[: self.payloads.index(MARKER)]
        del self.payloads[: self.payloads.index(MARKER) + 1]
        return [m for m in map(decode, heard) if m is not None]


@pytest.fixture
async def listening(db: Database) -> AsyncIterator[tuple[Services, Inbox]]:
    inbox = Inbox()
    listener = notify.Listener(db.engine, inbox.payload, lambda: None)
    await listener.start()
    try:
        async with services(db) as svc:
            await inbox.until_marker(db)  # what setting up said
            yield svc, inbox
    finally:
        await listener.stop()


POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@POSTGRESQL
async def test_a_batch_of_a_thousand_jobs_wakes_the_replicas_once(
    db: Database, listening: tuple[Services, Inbox]
) -> None:
    svc, inbox = listening
    specs = [JobSpec(platform=LINUX, command=("true",)) for _ in range(1000)]
    await svc.jobs.submit(specs, actor="admin")
    assert await inbox.until_marker(db) == [WAKE]


@POSTGRESQL
async def test_jobs_that_only_wait_wake_nobody(
    db: Database, listening: tuple[Services, Inbox]
) -> None:
    svc, inbox = listening
    later = svc.clock.now().replace(year=svc.clock.now().year + 1)
    await svc.jobs.submit([JobSpec(platform=LINUX, command=("true",), not_before=later)], actor="a")
    assert await inbox.until_marker(db) == []


@POSTGRESQL
async def test_a_freed_coalesce_key_wakes_the_replicas(
    db: Database, listening: tuple[Services, Inbox]
) -> None:
    svc, inbox = listening
    spec = JobSpec(platform=LINUX, command=("true",), coalesce_keys=frozenset({"repo"}))
    await svc.jobs.submit([spec, spec], actor="admin")
    runner = await svc.connect("r1", capacity=2)
    [a] = await svc.jobs.claim([runner])  # the second waits for the key
    await inbox.until_marker(db)
    verdict = await svc.executions.report_result(
        runner.session_id, "r1", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert verdict.applied
    assert await inbox.until_marker(db) == [WAKE]


@POSTGRESQL
async def test_a_result_without_coalesce_keys_sends_nothing(
    db: Database, listening: tuple[Services, Inbox]
) -> None:
    svc, inbox = listening
    await svc.jobs.submit([JobSpec(platform=LINUX, command=("true",))], actor="admin")
    runner = await svc.connect("r1")
    [a] = await svc.jobs.claim([runner])
    await inbox.until_marker(db)
    await svc.executions.report_result(
        runner.session_id, "r1", ResultReport(a.execution_id, Outcome.SUCCEEDED)
    )
    assert await inbox.until_marker(db) == []


@POSTGRESQL
async def test_cancel_drain_and_evict_are_told_to_every_replica(
    db: Database, listening: tuple[Services, Inbox]
) -> None:
    svc, inbox = listening
    [(job, _)] = await svc.jobs.submit([JobSpec(platform=LINUX, command=("true",))], actor="a")
    runner = await svc.connect("r1")
    [a] = await svc.jobs.claim([runner])
    await inbox.until_marker(db)

    _, order = await svc.jobs.cancel(job.id, actor="admin", reason="not wanted")
    assert order == CancelOrder(runner.session_id, a.execution_id, "not wanted")
    assert await inbox.until_marker(db) == [order]

    await svc.sessions.set_draining("r1", True, "maintenance")
    assert await inbox.until_marker(db) == [RunnerDrained("r1", True, "maintenance")]

    eviction = await Fleet(svc.ctx, svc.sessions).evict("r1", actor="admin", reason="broken")
    assert eviction.session_ids == (runner.session_id,)
    heard = await inbox.until_marker(db)
    assert SessionsEnded((runner.session_id,), "evicted by admin: broken") in heard


@POSTGRESQL
async def test_a_runner_connecting_again_ends_its_old_stream_everywhere(
    db: Database, listening: tuple[Services, Inbox]
) -> None:
    svc, inbox = listening
    first = await svc.connect("r1")
    await inbox.until_marker(db)
    await svc.connect("r1")  # no resume token: a new session replaces the first
    heard = await inbox.until_marker(db)
    assert heard == [SessionsEnded((first.session_id,), "runner r1 connected again")]


@POSTGRESQL
async def test_every_flavor_change_tells_the_replicas(
    db: Database, listening: tuple[Services, Inbox]
) -> None:
    svc, inbox = listening
    await svc.flavors.add(Flavor("big", LINUX), actor="t")
    assert await inbox.until_marker(db) == [FLAVORS_CHANGED]
    await svc.flavors.set_enabled("big", False, actor="t")
    assert await inbox.until_marker(db) == [FLAVORS_CHANGED]
    await svc.flavors.delete("big", actor="t")
    assert FLAVORS_CHANGED in await inbox.until_marker(db)
