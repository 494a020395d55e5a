"""Every method's handler wrapped once by the layers every RPC passes (metrics, error
mapping, auth, request decoding), not on every call.

grpc.aio runs server interceptors on every call: each one a coroutine that looks the
handler up again and wraps it anew. The wrapping depends on the method alone, so here
it is done when the method is registered (or first called, for a generic handler) and
kept: a call costs one lookup, and only the wrappers themselves run."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import grpc

if TYPE_CHECKING:
    MethodHandler: TypeAlias = grpc.RpcMethodHandler[Any, Any]
else:  # not subscriptable at run time
    MethodHandler: TypeAlias = grpc.RpcMethodHandler
Behavior = Callable[..., Any]


class MethodWrapper(Protocol):
    def wrap(self, handler: MethodHandler, method: str) -> MethodHandler:
        """``handler`` of ``method`` ("/package.Service/Method") with this layer around it."""
        ...


class WrappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A layer given as :meth:`wrap`; also usable as a plain server interceptor."""

    @abstractmethod
    def wrap(self, handler: MethodHandler, method: str) -> MethodHandler: ...

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> MethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return self.wrap(handler, handler_call_details.method)


def with_behavior(
    handler: MethodHandler,
    *,
    unary_response: Callable[[Behavior], Behavior],
    streaming_response: Callable[[Behavior], Behavior],
) -> MethodHandler:
    """``handler`` with its behavior wrapped: by ``unary_response`` for a method that
    returns one response, by ``streaming_response`` for one that streams them."""
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=unary_response(handler.unary_unary))  # type: ignore[attr-defined,no-any-return]
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=unary_response(handler.stream_unary))  # type: ignore[attr-defined,no-any-return]
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=streaming_response(handler.unary_stream))  # type: ignore[attr-defined,no-any-return]
    if handler.stream_stream is not None:
        return handler._replace(stream_stream=streaming_response(handler.stream_stream))  # type: ignore[attr-defined,no-any-return]
    return handler


class WrappingServer(grpc.aio.Server):
    """A grpc.aio server whose services' handlers, as they are registered, go inside
    ``wrappers`` (the first is outermost)."""

    def __init__(self, server: grpc.aio.Server, wrappers: Sequence[MethodWrapper]) -> None:
        self._server = server
        self._wrap = _wrapping(wrappers)

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_WrappedGenericHandler(h, self._wrap) for h in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, MethodHandler]
    ) -> None:
        # grpc's type stubs do not know this method yet (grpcio 1.62+).
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service_name,
            {
                name: self._wrap(handler, f"/{service_name}/{name}")
                for name, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None = None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (grpc's signature)
        return await self._server.wait_for_termination(timeout)


def _wrapping(wrappers: Sequence[MethodWrapper]) -> Callable[[MethodHandler, str], MethodHandler]:
    def wrap(handler: MethodHandler, method: str) -> MethodHandler:
        for wrapper in reversed(wrappers):
            handler = wrapper.wrap(handler, method)
        return handler

    return wrap


class _WrappedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(
        self,
        inner: grpc.GenericRpcHandler[Any, Any],
        wrap: Callable[[MethodHandler, str], MethodHandler],
    ) -> None:
        self._inner = inner
        self._wrap = wrap
        self._known: dict[str, MethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> MethodHandler | None:
        method: str = handler_call_details.method
        handler = self._known.get(method)
        if handler is None:
            found = self._inner.service(handler_call_details)
            if found is None:
                return None  # not ours; unknown names are not kept
            handler = self._known[method] = self._wrap(found, method)
        return handler
