"""Distributor RPCs (SPEC §7): proto in, the distributor service, proto out."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher.distributors.service import DistributorService
from dispatcher.v1 import distributor_pb2, distributor_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class DistributorServicer(distributor_pb2_grpc.DistributorServicer):
    def __init__(self, distributors: DistributorService) -> None:
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
        infos = []
        for d in await self._distributors.list():
            config = struct_pb2.Struct()
            config.update(d.config)
            down_since = None
            if d.down_since is not None:
                down_since = Timestamp()
                down_since.FromDatetime(d.down_since)
            infos.append(
                distributor_pb2.DistributorInfo(
                    name=d.name,
                    kind=d.kind,
                    config=config,
                    up=d.up,
                    down_since=down_since,
                    cause=d.cause,
                    parallelism=d.parallelism,
                )
            )
        return distributor_pb2.ListDistributorsResponse(distributors=infos)

    async def ValidateConfig(
        self, request: distributor_pb2.ValidateConfigRequest, context: Context
    ) -> distributor_pb2.ValidateConfigResponse:
        config = json_format.MessageToDict(request.config)
        self._distributors.validate_config(request.kind, config)
        return distributor_pb2.ValidateConfigResponse()
