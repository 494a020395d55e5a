"""Distributor RPCs. Until distributor adapters arrive (SPEC §7) the runner pool is the
only distributor, and its executions take no notifications."""

from __future__ import annotations

from typing import Any

import grpc

from dispatcher.lifecycle.distributors import Distributors
from dispatcher.v1 import distributor_pb2, distributor_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class DistributorServicer(distributor_pb2_grpc.DistributorServicer):
    def __init__(self, distributors: Distributors) -> None:
        self._distributors = distributors

    async def Notify(
        self, request: distributor_pb2.NotifyRequest, context: Context
    ) -> distributor_pb2.NotifyResponse:
        applied = await self._distributors.notify(
            request.execution_id, request.token, request.data, dict(request.attrs)
        )
        return distributor_pb2.NotifyResponse(applied=applied)

    async def ListDistributors(
        self, request: distributor_pb2.ListDistributorsRequest, context: Context
    ) -> distributor_pb2.ListDistributorsResponse:
        return distributor_pb2.ListDistributorsResponse(
            distributors=[
                distributor_pb2.DistributorInfo(name=d.name, kind=d.kind)
                for d in self._distributors.list()
            ]
        )
