"""The layers around every RPC (api/handlers.py) are built once per method, not on
every call, and each call still passes through them."""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from dispatcher.api.handlers import MethodHandler, WrappingServer, with_behavior


class Counting:
    def __init__(self, name: str, order: list[str]) -> None:
        self.name = name
        self.order = order
        self.built: Counter[str] = Counter()

    def wrap(self, handler: MethodHandler, method: str) -> MethodHandler:
        self.built[method] += 1

        def unary(behavior: Any) -> Any:
            async def wrapper(request: Any, context: Any) -> Any:
                self.order.append(self.name)
                return await behavior(request, context)

            return wrapper

        return with_behavior(handler, unary_response=unary, streaming_response=lambda b: b)


@pytest.mark.parametrize("registered", [True, False], ids=["registered", "generic"])
async def test_each_method_is_wrapped_once_and_every_call_passes_the_layers_in_order(
    registered: bool,
) -> None:
    order: list[str] = []
    outer, inner = Counting("outer", order), Counting("inner", order)
    server = WrappingServer(grpc.aio.server(), [outer, inner])
    servicer = health_aio.HealthServicer()
    if registered:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    else:  # only the generic handler, as a hand-written service might register
        handlers = {
            "Check": grpc.unary_unary_rpc_method_handler(
                servicer.Check,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            )
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("grpc.health.v1.Health", handlers),)
        )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for _ in range(3):
                reply = await stub.Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await channel.unary_unary("/grpc.health.v1.Health/Nope")(b"")
    finally:
        await server.stop(None)
    assert unknown.value.code() is grpc.StatusCode.UNIMPLEMENTED
    check = "/grpc.health.v1.Health/Check"
    assert outer.built[check] == inner.built[check] == 1
    assert "/grpc.health.v1.Health/Nope" not in outer.built
    assert order == ["outer", "inner"] * 3
