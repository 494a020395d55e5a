"""Tokens through the Admin service: the secret shown once, never listed, only a hash
stored; a deleted token refused at once and its open stream closed within seconds."""

from __future__ import annotations

import time

import grpc
import pytest
from sqlalchemy import select

from dispatcher.domain.tokens import hash_secret
from dispatcher.store import tokens as token_store
from dispatcher.store.database import Database
from dispatcher.store.tables import tokens
from dispatcher.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from tests.support.eventually import eventually
from tests.support.server import connect_runner, open_channel, running_server
from tests.support.tokens import authenticated_channel

# Deleted through this replica: the stream must end at once; allow for a slow machine.
LOCAL_CUT_BOUND_SECONDS = 2.0
RECHECK_SECONDS = 0.3
# Deleted through another replica (the database): one re-check period, plus slack.
REMOTE_CUT_BOUND_SECONDS = RECHECK_SECONDS + 2.0


async def create(admin: admin_pb2_grpc.AdminStub, name: str, role: int) -> str:
    response = await admin.CreateToken(admin_pb2.CreateTokenRequest(name=name, role=role))  # type: ignore[arg-type]
    return response.secret


async def test_a_secret_is_shown_once_and_only_its_hash_is_stored(database_url: str) -> None:
    async with running_server(database_url) as server, open_channel(server) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        created = await admin.CreateToken(
            admin_pb2.CreateTokenRequest(name="builder-7", role=admin_pb2.TOKEN_ROLE_RUNNER)
        )
        assert created.token.name == "builder-7"
        assert created.token.role == admin_pb2.TOKEN_ROLE_RUNNER
        prefix, token_id, random_part = created.secret.split("_", 2)
        assert (prefix, int(token_id)) == ("dsp", created.token.id)
        assert len(random_part) == 43  # 32 random bytes, URL-safe base64

        listed = await admin.ListTokens(admin_pb2.ListTokensRequest())
        assert "builder-7" in [t.name for t in listed.tokens]
        assert random_part not in str(listed)
        assert hash_secret(random_part) not in str(listed)

        db = Database(database_url)
        try:
            with db.transaction() as conn:
                rows = [tuple(r) for r in conn.execute(select(tokens))]
        finally:
            db.close()
        assert not any(random_part in str(row) for row in rows)
        assert any(hash_secret(random_part) in row for row in rows)

        with pytest.raises(grpc.aio.AioRpcError) as again:
            await create(admin, "builder-7", admin_pb2.TOKEN_ROLE_ADMIN)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
        with pytest.raises(grpc.aio.AioRpcError) as no_role:
            await create(admin, "builder-8", admin_pb2.TOKEN_ROLE_UNSPECIFIED)
        assert no_role.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "role" in (no_role.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await admin.DeleteToken(admin_pb2.DeleteTokenRequest(name="nobody"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_deleted_token_is_refused_at_once_and_its_stream_closed(
    database_url: str,
) -> None:
    async with (
        running_server(database_url, auth={"cache_seconds": 60.0}) as server,
        open_channel(server) as channel,
    ):
        admin = admin_pb2_grpc.AdminStub(channel)
        secret = await create(admin, "builder-9", admin_pb2.TOKEN_ROLE_RUNNER)
        address = f"127.0.0.1:{server.port}"
        async with authenticated_channel(address, secret=secret) as as_runner:
            runner, welcome = await connect_runner(as_runner, "builder-9")
            assert welcome.session_id > 0

            started = time.monotonic()
            await admin.DeleteToken(admin_pb2.DeleteTokenRequest(name="builder-9"))
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await runner.next()
            took = time.monotonic() - started
            assert cut.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "builder-9" in (cut.value.details() or "")
            assert took < LOCAL_CUT_BOUND_SECONDS, f"the stream lived {took:.2f}s"

            # New calls are refused at once, though the token was remembered for 60 s.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await connect_runner(as_runner, "builder-9")
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        async def offline() -> bool:
            listed = await admin.ListRunners(admin_pb2.ListRunnersRequest())
            return [r.state for r in listed.runners if r.name == "builder-9"] == [
                types_pb2.RUNNER_STATE_OFFLINE
            ]

        # The session ended with the stream.
        await eventually(offline)


async def test_a_token_deleted_through_another_replica_loses_its_stream_within_the_recheck(
    database_url: str,
) -> None:
    async with (
        running_server(
            database_url, auth={"cache_seconds": 0.5, "stream_recheck_seconds": RECHECK_SECONDS}
        ) as server,
        open_channel(server) as channel,
    ):
        admin = admin_pb2_grpc.AdminStub(channel)
        secret = await create(admin, "builder-10", admin_pb2.TOKEN_ROLE_RUNNER)
        async with authenticated_channel(f"127.0.0.1:{server.port}", secret=secret) as as_runner:
            runner, _ = await connect_runner(as_runner, "builder-10")
            db = Database(database_url)
            try:
                started = time.monotonic()
                # What another replica's DeleteToken (or the CLI on the database) does.
                with db.transaction() as conn:
                    assert token_store.delete_token(conn, "builder-10") is not None
            finally:
                db.close()
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await runner.next()
            took = time.monotonic() - started
            assert cut.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert took < REMOTE_CUT_BOUND_SECONDS, f"the stream lived {took:.2f}s"

            async def refused() -> bool:
                try:
                    await admin_pb2_grpc.AdminStub(as_runner).GetServerInfo(
                        admin_pb2.GetServerInfoRequest()
                    )
                except grpc.aio.AioRpcError as error:
                    return error.code() == grpc.StatusCode.UNAUTHENTICATED
                return False

            await eventually(refused, timeout=2.0)


async def test_streams_per_token_are_limited(database_url: str) -> None:
    limits = {"max_streams_per_token": 2}
    async with running_server(database_url, limits=limits) as server:
        async with open_channel(server) as channel:
            await connect_runner(channel, "a")
            await connect_runner(channel, "b")
            with pytest.raises(grpc.aio.AioRpcError) as third:
                await connect_runner(channel, "c")
        assert third.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limits.max_streams_per_token" in (third.value.details() or "")


async def test_events_name_the_token_that_acted(database_url: str) -> None:
    async with running_server(database_url) as server, open_channel(server) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        secret = await create(admin, "release-bot", admin_pb2.TOKEN_ROLE_ADMIN)
        spec = types_pb2.JobSpec(platform="linux/amd64", command=["true"])
        async with authenticated_channel(f"127.0.0.1:{server.port}", secret=secret) as as_bot:
            bot = admin_pb2_grpc.AdminStub(as_bot)
            job = (await bot.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job
            await bot.CancelJob(admin_pb2.CancelJobRequest(id=job.id, reason="superseded"))
        # Another token's call on the same server keeps its own name.
        other = (await admin.SubmitJob(admin_pb2.SubmitJobRequest(spec=spec))).job
        history = await admin.GetJobHistory(admin_pb2.GetJobHistoryRequest(id=job.id))
        assert [(e.kind, e.actor) for e in history.events] == [
            ("submitted", "release-bot"),
            ("cancelled", "release-bot"),
        ]
        [submitted] = (
            await admin.GetJobHistory(admin_pb2.GetJobHistoryRequest(id=other.id))
        ).events
        assert submitted.actor != "release-bot"
