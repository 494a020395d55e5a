"""One conformance suite for every distributor adapter (STYLE 11, SPEC §7): the steerable
fake, subprocess, http (against a real local HTTP server), external, and the echo
plugin installed from examples/ as a separate package; on SQLite and PostgreSQL, through
a real dispatcher on loopback gRPC."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from sqlalchemy import select

from dispatcher.domain.states import Outcome
from dispatcher.store.database import Database
from dispatcher.store.tables import executions
from dispatcher.v1 import admin_pb2, distributor_pb2, distributor_pb2_grpc, types_pb2
from tests.support.backends import HARNESSES, Farm, Harness, farm
from tests.support.eventually import eventually
from tests.support.server import admin, open_channel

pytestmark = pytest.mark.parametrize("harness", HARNESSES, ids=lambda h: h.kind)

_STATE = {
    Outcome.SUCCEEDED: types_pb2.JOB_STATE_SUCCEEDED,
    Outcome.FAILED: types_pb2.JOB_STATE_FAILED,
}


async def submit(farm: Farm, harness: Harness, ending: Outcome | None) -> int:
    spec = types_pb2.JobSpec(platform="linux/x86_64", distributor=harness.kind)
    for key, value in harness.spec(ending).items():
        if key == "command":
            spec.command.extend(value)
        else:
            setattr(spec, key, value)
    async with open_channel(farm.server) as channel:
        response = await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))
    return response.job.id


async def get_job(farm: Farm, job_id: int) -> types_pb2.Job:
    async with open_channel(farm.server) as channel:
        response = await admin(channel).GetJob(admin_pb2.GetJobRequest(id=job_id))
    return response.job


async def in_state(farm: Farm, job_id: int, state: int, within: float = 10) -> types_pb2.Job:
    async def check() -> types_pb2.Job | None:
        job = await get_job(farm, job_id)
        events = [(e.kind, e.cause) for e in job.events]
        assert job.state == state, f"job {job_id} is {job.state}: {events}"
        return job

    return await eventually(check, timeout=within, message=f"job {job_id} in state {state}")


async def building(farm: Farm, job_id: int) -> types_pb2.Job:
    return await in_state(farm, job_id, types_pb2.JOB_STATE_BUILDING)


def snapshot_of(database_url: str, execution_id: int) -> dict[str, Any]:
    db = Database(database_url)
    try:
        with db.transaction() as conn:
            row = conn.execute(
                select(executions.c.config_snapshot, executions.c.token_hash).where(
                    executions.c.id == execution_id
                )
            ).one()
    finally:
        db.close()
    assert len(row.token_hash or "") == 64  # a hash, never the token
    return dict(row.config_snapshot)


@pytest.mark.parametrize("outcome", [Outcome.SUCCEEDED, Outcome.FAILED], ids=str.lower)
async def test_a_job_runs_to_its_outcome(
    database_url: str, harness: Harness, outcome: Outcome
) -> None:
    async with farm(database_url) as f:
        job_id = await submit(f, harness, outcome)
        if not harness.ends_alone:
            job = await building(f, job_id)
            await harness.end(f, job.current_execution_id, outcome)
        job = await in_state(f, job_id, _STATE[outcome])
        [execution] = job.executions
        assert execution.distributor == harness.kind
        assert execution.outcome == (
            types_pb2.OUTCOME_SUCCEEDED
            if outcome is Outcome.SUCCEEDED
            else types_pb2.OUTCOME_FAILED
        )
        assert job.runner == ""
        config = snapshot_of(database_url, execution.id)
        assert config == f.server.distributors.registry.instances[harness.kind].config  # type: ignore[union-attr]
        kinds = [e.kind for e in job.events]
        assert kinds[:2] == ["submitted", "started"]
        if harness.kind == "external":
            assert "backend-started" in kinds
            assert dict(job.raw) == {
                "runner": "ext-1",
                "conclusion": outcome.value.lower()[:-2] + "ed",
            }


async def test_cancel_stops_the_backend(database_url: str, harness: Harness) -> None:
    async with farm(database_url) as f:
        job_id = await submit(f, harness, None)
        job = await building(f, job_id)
        if harness.kind == "http":
            await eventually(lambda: job.current_execution_id in f.http.received)
        async with open_channel(f.server) as channel:
            await admin(channel).CancelJob(admin_pb2.CancelJobRequest(id=job_id, reason="test"))
        job = await in_state(f, job_id, types_pb2.JOB_STATE_CANCELLED, within=15)
        assert job.executions[-1].outcome == types_pb2.OUTCOME_CANCELLED
        if harness.kind == "fake":
            assert f.fake().token_of(job.current_execution_id) in f.fake().cancelled
        if harness.kind == "http":
            assert f"task-{job.current_execution_id}" in f.http.cancelled


async def test_a_forged_notification_changes_nothing(database_url: str, harness: Harness) -> None:
    async with farm(database_url) as f:
        job_id = await submit(f, harness, None)
        before = await building(f, job_id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await f.notify(before.current_execution_id, "not-the-token", {"state": "succeeded"})
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        after = await get_job(f, job_id)
        assert after.state == types_pb2.JOB_STATE_BUILDING
        assert after.current_execution_id == before.current_execution_id
        assert "forged-notification" in [e.kind for e in after.events]
        async with open_channel(f.server) as channel:
            await admin(channel).CancelJob(admin_pb2.CancelJobRequest(id=job_id))


async def test_it_is_listed_and_its_config_validates(database_url: str, harness: Harness) -> None:
    async with farm(database_url) as f, open_channel(f.server) as channel:
        stub = distributor_pb2_grpc.DistributorStub(channel)
        listed = await stub.ListDistributors(distributor_pb2.ListDistributorsRequest())
        [info] = [d for d in listed.distributors if d.name == harness.kind]
        assert (info.kind, info.up, info.parallelism) == (harness.kind, True, 4)
        if harness.kind == "external":
            assert info.config["secret"] == "(hidden)"
        request = distributor_pb2.ValidateConfigRequest(kind=harness.kind)
        request.config.update({"no_such_key": 1})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ValidateConfig(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "no_such_key" in (caught.value.details() or "")
