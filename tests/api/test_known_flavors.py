"""Admission keeps the flavors in memory; a change made anywhere is used by the very
next submit (SPEC §5.1: jobs get a flavor at submission)."""

from __future__ import annotations

import time

import pytest

from dispatcher.domain.model import Flavor
from dispatcher.store.database import Database
from dispatcher.v1 import admin_pb2, types_pb2
from tests.support.server import admin, open_channel, running_server
from tests.support.services import services

LINUX = "linux/x86_64"


def spec() -> types_pb2.JobSpec:
    return types_pb2.JobSpec(platform=LINUX, command=["true"])


async def test_a_flavor_change_here_is_used_by_the_next_submit(database_url: str) -> None:
    async with running_server(database_url) as server, open_channel(server) as channel:
        stub = admin(channel)
        first = await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec()))
        assert first.job.flavor == ""  # the flavors (none) are kept now
        await stub.AddFlavor(
            admin_pb2.AddFlavorRequest(
                flavor=types_pb2.Flavor(name="big", platform=LINUX, enabled=True)
            )
        )
        second = await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec()))
        assert second.job.flavor == "big"
        await stub.DisableFlavor(admin_pb2.DisableFlavorRequest(name="big"))
        third = await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec()))
        assert third.job.flavor == ""
        assert third.job.state == types_pb2.JOB_STATE_NOTICED  # its platform's flavors are off


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_flavor_added_by_another_replica_is_used_within_moments(
    database_url: str,
) -> None:
    """Well inside the kept flavors' time to live (5 s): the other replica's
    notification made this one read them again."""
    async with running_server(database_url) as server, open_channel(server) as channel:
        stub = admin(channel)
        first = await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec()))
        assert first.job.flavor == ""
        other = Database(database_url)
        try:
            async with services(other, replica_id="replica-b") as b:
                await b.flavors.add(Flavor("big", LINUX), actor="t")
        finally:
            other.close()
        added = time.monotonic()
        while True:
            job = (await stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec()))).job
            if job.flavor == "big":
                break
            assert time.monotonic() - added < 1.0, "the flavor change was not heard"
