"""Counts every RPC by method and final status code, for the metrics. It sits outside
ErrorMappingInterceptor, so it sees the code the client sees."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import grpc


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


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, observer: RpcObserver) -> None:
        self._observer = observer

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split(handler_call_details.method)

        def record(code: str) -> None:
            self._observer.rpc_handled(service, method, code)

        if handler.unary_unary is not None:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, record))  # type: ignore[attr-defined,no-any-return]
        if handler.stream_unary is not None:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, record))  # type: ignore[attr-defined,no-any-return]
        if handler.unary_stream is not None:
            return handler._replace(unary_stream=_wrap_streaming(handler.unary_stream, record))  # type: ignore[attr-defined,no-any-return]
        if handler.stream_stream is not None:
            return handler._replace(stream_stream=_wrap_streaming(handler.stream_stream, record))  # type: ignore[attr-defined,no-any-return]
        return handler
