"""Every RPC of dispatcher's services, enumerated from the proto descriptors, and a way
to call any of them with raw bytes so that tests need no per-method code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from sqlalchemy import select

from dispatcher.store.database import Database
from dispatcher.store.tables import metadata
from dispatcher.v1 import admin_pb2, distributor_pb2, scheduler_pb2

SERVICES = (
    admin_pb2.DESCRIPTOR.services_by_name["Admin"],
    scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"],
    distributor_pb2.DESCRIPTOR.services_by_name["Distributor"],
)


@dataclass(frozen=True)
class Rpc:
    descriptor: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.descriptor.containing_service.full_name}/{self.descriptor.name}"

    @property
    def service(self) -> str:
        return str(self.descriptor.containing_service.full_name)

    @property
    def client_streaming(self) -> bool:
        return bool(self.descriptor.client_streaming)

    @property
    def server_streaming(self) -> bool:
        return bool(self.descriptor.server_streaming)

    def request_class(self) -> Any:
        return message_factory.GetMessageClass(self.descriptor.input_type)

    def __str__(self) -> str:
        return self.path


ALL_RPCS = tuple(Rpc(m) for service in SERVICES for m in service.methods)


def _identity(data: bytes) -> bytes:
    return data


# How long an answering stream may stay quiet before the caller counts it as alive.
QUIET_STREAM_SECONDS = 0.5


async def call_raw(
    channel: grpc.aio.Channel,
    rpc: Rpc,
    payloads: list[bytes],
    *,
    metadata: tuple[tuple[str, str], ...] | None = None,
    deadline_seconds: float = 10.0,
    max_responses: int = 3,
) -> tuple[grpc.StatusCode, str]:
    """Send ``payloads`` (serialized requests: one for unary requests) and return the
    call's status code and details. A stream that is still open after its first
    responses is cancelled by us and reported as OK."""
    kwargs: dict[str, Any] = {"request_serializer": _identity, "response_deserializer": _identity}
    try:
        if not rpc.client_streaming and not rpc.server_streaming:
            await channel.unary_unary(rpc.path, **kwargs)(
                payloads[0], metadata=metadata, timeout=deadline_seconds
            )
            return grpc.StatusCode.OK, ""
        if rpc.client_streaming and not rpc.server_streaming:
            await channel.stream_unary(rpc.path, **kwargs)(
                _iterate(payloads), metadata=metadata, timeout=deadline_seconds
            )
            return grpc.StatusCode.OK, ""
        if rpc.client_streaming:
            call = channel.stream_stream(rpc.path, **kwargs)(
                _iterate(payloads), metadata=metadata, timeout=deadline_seconds
            )
        else:
            call = channel.unary_stream(rpc.path, **kwargs)(
                payloads[0], metadata=metadata, timeout=deadline_seconds
            )
        # A stream that keeps answering, or stays open quietly after answering (a watch
        # waiting for the next change), is alive: we end it ourselves.
        for received in range(max_responses):
            try:
                message = await asyncio.wait_for(
                    call.read(), None if received == 0 else QUIET_STREAM_SECONDS
                )
            except TimeoutError:
                break
            if message is grpc.aio.EOF:
                return grpc.StatusCode.OK, ""
        call.cancel()
        return grpc.StatusCode.OK, ""
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""


async def _iterate(payloads: list[bytes]) -> AsyncIterator[bytes]:
    for payload in payloads:
        yield payload


def snapshot(
    db: Database, *, ignore: frozenset[str] = frozenset()
) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, for "the database is unchanged" checks; ``ignore``
    names columns (``table.column``) left out."""
    with db.transaction() as conn:
        return {
            table.name: sorted(
                (
                    tuple(row)
                    for row in conn.execute(
                        select(*(c for c in table.c if f"{table.name}.{c.name}" not in ignore))
                    )
                ),
                key=repr,
            )
            for table in metadata.sorted_tables
        }
