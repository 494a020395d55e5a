"""The one table from domain errors to gRPC status codes, applied to every RPC by one
interceptor. Unexpected errors are logged with an id; the client gets INTERNAL and the
id only — never a trace, never SQL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from dispatcher.api.handlers import MethodHandler, WrappingInterceptor, with_behavior
from dispatcher.domain import errors

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.DispatcherError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def status_of(error: errors.DispatcherError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


async def _abort_for(
    exc: Exception, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> None:
    if isinstance(exc, errors.DispatcherError):
        await context.abort(status_of(exc), str(exc))
    incident = uuid.uuid4().hex[:12]
    log.error("unexpected error in %s (incident %s)", method, incident, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident})")


Handler = Callable[..., Any]


def _wrap_unary(behavior: Handler, method: str) -> Handler:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, method)

    return wrapper


def _wrap_streaming(behavior: Handler, method: str) -> Handler:
    async def wrapper(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, method)

    return wrapper


class ErrorMappingInterceptor(WrappingInterceptor):
    def wrap(self, handler: MethodHandler, method: str) -> MethodHandler:
        return with_behavior(
            handler,
            unary_response=lambda behavior: _wrap_unary(behavior, method),
            streaming_response=lambda behavior: _wrap_streaming(behavior, method),
        )
