"""A bare grpc.aio server that speaks just enough Scheduler.Connect for idle runners: it
reads the Hello, sends a Welcome with a heartbeat interval and reads until the stream
ends. No database, no auth, no sessions: the floor under a stream's cost, for
benchmarks.streams --server bare.

    python -m benchmarks.bare_scheduler    # prints "listening on port N"
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from dispatcher.v1 import scheduler_pb2, scheduler_pb2_grpc

HEARTBEAT_SECONDS = 10
# As the dispatcher's default: the floor of the same idle workload.
IDLE_HEARTBEAT_SECONDS = 600


class BareScheduler(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self) -> None:
        self.sessions = 0

    async def Connect(
        self,
        request_iterator: AsyncIterator[scheduler_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[scheduler_pb2.ConnectResponse]:
        first = await anext(request_iterator, None)
        if first is None:
            return
        self.sessions += 1
        yield scheduler_pb2.ConnectResponse(
            welcome=scheduler_pb2.Welcome(
                session_id=self.sessions,
                heartbeat_interval=Duration(seconds=HEARTBEAT_SECONDS),
                idle_heartbeat_interval=Duration(seconds=IDLE_HEARTBEAT_SECONDS),
            )
        )
        async for _ in request_iterator:
            pass


async def serve() -> None:
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(BareScheduler(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"listening on port {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
