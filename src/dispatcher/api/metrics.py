"""Counts every RPC by method and final status code, for the metrics. It sits outside
ErrorMappingInterceptor, so it sees the code the client sees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import grpc

from dispatcher.api.handlers import MethodHandler, WrappingInterceptor, with_behavior


class RpcObserver(Protocol):
    def rpc_handled(self, service: str, method: str, code: str) -> None:
        """An RPC ended with ``code`` (a grpc.StatusCode name, e.g. "OK")."""


Handler = Callable[..., Any]
Context = grpc.aio.ServicerContext[Any, Any]


def _code(context: Context, default: grpc.StatusCode) -> str:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        # grpc.aio may keep the raw integer value that abort() was given.
        return next((c.name for c in grpc.StatusCode if c.value[0] == code), default.name)
    return default.name


def _split(full_method: str) -> tuple[str, str]:
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _wrap_unary(behavior: Handler, record: Callable[[str], None]) -> Handler:
    async def wrapper(request: Any, context: Context) -> Any:
        try:
            response = await behavior(request, context)
        except asyncio.CancelledError:
            record(grpc.StatusCode.CANCELLED.name)
            raise
        except BaseException:
            record(_code(context, grpc.StatusCode.UNKNOWN))
            raise
        record(_code(context, grpc.StatusCode.OK))
        return response

    return wrapper


def _wrap_streaming(behavior: Handler, record: Callable[[str], None]) -> Handler:
    async def wrapper(request: Any, context: Context) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            record(grpc.StatusCode.CANCELLED.name)
            raise
        except BaseException:
            record(_code(context, grpc.StatusCode.UNKNOWN))
            raise
        record(_code(context, grpc.StatusCode.OK))

    return wrapper


class RpcMetricsInterceptor(WrappingInterceptor):
    def __init__(self, observer: RpcObserver) -> None:
        self._observer = observer

    def wrap(self, handler: MethodHandler, method: str) -> MethodHandler:
        service, name = _split(method)

        def record(code: str) -> None:
            self._observer.rpc_handled(service, name, code)

        return with_behavior(
            handler,
            unary_response=lambda behavior: _wrap_unary(behavior, record),
            streaming_response=lambda behavior: _wrap_streaming(behavior, record),
        )
