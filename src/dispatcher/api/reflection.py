"""Server reflection, with method symbols resolved.

The protobuf runtime's descriptor pool finds services, messages, enums and fields by
name but not methods ("pkg.Service.Method"), so the stock servicer answers NOT_FOUND
when ``grpcurl describe pkg.Service.Method`` asks for the file containing a method
(grpc/grpc issue 34743). Here a method resolves to its service's file, which is what
the reflection protocol asks for.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer


class MethodAwareReflectionServicer(ReflectionServicer):  # type: ignore[misc]
    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response") or "." not in fully_qualified_name:
            return response
        service_name, _, method_name = fully_qualified_name.rpartition(".")
        pool: descriptor_pool.DescriptorPool = self._pool
        try:
            service = pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method_name not in service.methods_by_name:
            return response
        return super()._file_containing_symbol(request, service.full_name)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    names = (
        *service_names,
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"].full_name,
    )
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        MethodAwareReflectionServicer(names), server
    )
