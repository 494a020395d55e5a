"""A real dispatcher in this process on a free loopback port, and a raw runner stream.

``running_server`` also creates one token per role; ``open_channel(server)`` gives a
channel that sends, on each call, the token of the role that service needs (admin for
Admin, runner for Scheduler, distributor for Distributor), so tests talk to a server
that checks tokens without saying so on every call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from dispatcher.app import Server, create_server
from dispatcher.domain.tokens import Role
from dispatcher.settings import Settings
from dispatcher.v1 import admin_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from dispatcher.web.app import VerifyAdminToken
from tests.support.tokens import RoleTokens, authenticated_channel


@asynccontextmanager
async def running_server(
    database_url: str,
    *,
    verify_admin_token: VerifyAdminToken | None = None,
    distributor_kinds: Any = None,
    **settings: Any,
) -> AsyncIterator[Server]:
    """``server.http_port`` is the status page's port (a free one unless given)."""
    settings.setdefault("http_listen", "127.0.0.1:0")
    server = await create_server(
        Settings(
            database_url=database_url,
            listen="127.0.0.1:0",
            migrate_on_start=True,
            shutdown_grace_seconds=0.5,
            **settings,
        ),
        verify_admin_token=verify_admin_token,
        distributor_kinds=distributor_kinds,
    )
    await server.start()
    assert server.tokens is not None
    tokens = RoleTokens(
        **{
            role.value: (await server.tokens.create(f"test-{role.value}", role)).secret
            for role in Role
        }
    )
    _TOKENS[id(server)] = tokens
    try:
        yield server
    finally:
        _TOKENS.pop(id(server), None)
        await server.stop()


# The tokens of each running server, by id(): Server is not hashable.
_TOKENS: dict[int, RoleTokens] = {}


def tokens_of(server: Server) -> RoleTokens:
    return _TOKENS[id(server)]


def open_channel(server: Server, *, role: Role | None = None) -> grpc.aio.Channel:
    """A channel to ``server`` carrying the token each service needs (or only the token
    of ``role``, for every call)."""
    return authenticated_channel(f"127.0.0.1:{server.port}", tokens_of(server), role=role)


@dataclass
class RawRunner:
    """A runner speaking the stream protocol by hand, message by message."""

    call: Any
    received: asyncio.Queue[scheduler_pb2.ConnectResponse] = field(default_factory=asyncio.Queue)

    async def send(self, **message: Any) -> None:
        await self.call.write(scheduler_pb2.ConnectRequest(**message))

    async def next(self) -> scheduler_pb2.ConnectResponse:
        """The next message from the dispatcher; fails after 5 s of silence."""
        async with asyncio.timeout(5.0):
            response = await self.call.read()
        assert response is not grpc.aio.EOF, "the stream ended"
        return response  # type: ignore[no-any-return]


async def connect_runner(
    channel: grpc.aio.Channel,
    name: str,
    *,
    platform: str = "linux/x86_64",
    labels: tuple[str, ...] = (),
    capacity: int = 1,
    resume_token: str = "",
) -> tuple[RawRunner, scheduler_pb2.Welcome]:
    call = scheduler_pb2_grpc.SchedulerStub(channel).Connect()
    runner = RawRunner(call)
    await runner.send(
        hello=scheduler_pb2.Hello(
            name=name,
            platform=platform,
            labels=labels,
            capacity=capacity,
            version="test",
            resume_token=resume_token,
        )
    )
    welcome = await runner.next()
    assert welcome.WhichOneof("message") == "welcome"
    return runner, welcome.welcome


def admin(channel: grpc.aio.Channel) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(channel)
