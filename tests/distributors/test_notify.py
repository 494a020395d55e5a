"""Distributor.Notify is fenced (SPEC §7, §11): only the current execution's own token
changes anything. Forged, foreign, stale and replayed notifications are refused with a
clear status, recorded in the job's history, and change nothing; a valid one applied
twice takes effect once."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from dispatcher.v1 import admin_pb2, distributor_pb2, distributor_pb2_grpc, types_pb2
from tests.support.backends import farm
from tests.support.eventually import eventually
from tests.support.server import admin, open_channel

FORGERIES = 1000


async def test_forged_stale_and_replayed_notifications_change_nothing(database_url: str) -> None:
    async with farm(database_url) as f, open_channel(f.server) as channel:
        stub = distributor_pb2_grpc.DistributorStub(channel)
        admin_stub = admin(channel)
        spec = types_pb2.JobSpec(platform="linux/x86_64", distributor="http", command=["b"])
        jobs = [
            (await admin_stub.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id
            for _ in range(2)
        ]

        async def running() -> list[types_pb2.Job] | None:
            found = [(await admin_stub.GetJob(admin_pb2.GetJobRequest(id=i))).job for i in jobs]
            ok = all(
                j.state == types_pb2.JOB_STATE_BUILDING
                and j.current_execution_id in f.http.received
                for j in found
            )
            return found if ok else None

        first, second = await eventually(running)
        mine = first.current_execution_id
        token = f.http.received[mine]["notify_token"]
        foreign = f.http.received[second.current_execution_id]["notify_token"]
        succeeded = json.dumps({"state": "succeeded"}).encode()

        async def send(execution_id: int, secret: str) -> grpc.StatusCode:
            request = distributor_pb2.NotifyRequest(
                execution_id=execution_id, token=secret, data=succeeded
            )
            try:
                await stub.Notify(request)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        # Forged: random tokens, a foreign execution's token, a token off by one letter.
        attempts = [(mine, f"guess-{n}") for n in range(FORGERIES - 2)]
        attempts += [(mine, foreign), (mine, token[:-1] + ("A" if token[-1] != "A" else "B"))]
        codes = await asyncio.gather(*(send(e, t) for e, t in attempts))
        assert set(codes) == {grpc.StatusCode.PERMISSION_DENIED}
        job = (await admin_stub.GetJob(admin_pb2.GetJobRequest(id=first.id))).job
        assert job.state == types_pb2.JOB_STATE_BUILDING
        forged = [e for e in job.events if e.kind == "forged-notification"]
        assert len(forged) == FORGERIES
        applied_before = [e.kind for e in job.events].count("finished")
        assert applied_before == 0

        # The valid one, sent twice at once and then replayed: applied exactly once.
        codes = await asyncio.gather(send(mine, token), send(mine, token))
        assert sorted(c.name for c in codes) == ["FAILED_PRECONDITION", "OK"]
        assert await send(mine, token) == grpc.StatusCode.FAILED_PRECONDITION
        job = (await admin_stub.GetJob(admin_pb2.GetJobRequest(id=first.id))).job
        assert job.state == types_pb2.JOB_STATE_SUCCEEDED
        assert [e.kind for e in job.events].count("finished") == 1
        # The two replays; a poll answered after the job ended may add its own refusal.
        refused = [e for e in job.events if e.kind == "stale-message" and "notification" in e.cause]
        assert len(refused) == 2

        # No such execution; no token; a runner-less execution id that is not a distributor's.
        assert await send(10**9, token) == grpc.StatusCode.NOT_FOUND
        assert await send(mine, "") == grpc.StatusCode.INVALID_ARGUMENT
        other = (await admin_stub.GetJob(admin_pb2.GetJobRequest(id=second.id))).job
        assert other.state == types_pb2.JOB_STATE_BUILDING


async def test_an_unreadable_body_is_invalid_and_changes_nothing(database_url: str) -> None:
    async with farm(database_url) as f, open_channel(f.server) as channel:
        spec = types_pb2.JobSpec(platform="linux/x86_64", distributor="http", command=["b"])
        job_id = (await admin(channel).SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job.id
        job = await eventually(
            lambda: next(iter(f.http.received.values()), None), message="the POST arrived"
        )
        stub = distributor_pb2_grpc.DistributorStub(channel)
        request = distributor_pb2.NotifyRequest(
            execution_id=job["execution_id"], token=job["notify_token"], data=b'{"state": "odd"}'
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Notify(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "state 'odd' is not one of" in (caught.value.details() or "")
        after = (await admin(channel).GetJob(admin_pb2.GetJobRequest(id=job_id))).job
        assert after.state == types_pb2.JOB_STATE_BUILDING
