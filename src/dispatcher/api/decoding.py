"""Requests that are not valid protobuf of their type get INVALID_ARGUMENT naming the
message type, instead of gRPC's UNKNOWN: the generated deserializer is wrapped so that a
parse failure becomes a marker, and the marker becomes InvalidInput where the servicer
would have seen the request (after the auth check, so strangers learn nothing).

Unary requests are also refused when a text field holds NUL. Stream messages are not:
a runner's log tail may hold any output, and the stream's own rules apply to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from dispatcher.api.handlers import MethodHandler, WrappingInterceptor
from dispatcher.domain.errors import InvalidInput


@dataclass(frozen=True)
class _Undecodable:
    type_name: str


def _guard_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    type_name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    name = type_name.full_name if type_name is not None else "the request type"

    def guarded(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, RuntimeError):
            return _Undecodable(name)

    return guarded


def _check(request: Any) -> Any:
    if isinstance(request, _Undecodable):
        raise InvalidInput(
            f"the request is not a valid {request.type_name} message (protobuf wire format)"
        )
    return request


def _refuse_nul(message: Message, path: str = "") -> None:
    """PostgreSQL text cannot hold U+0000; refusing it up front keeps the two databases
    alike and turns a driver error into a message naming the field."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if _is_map(field):
            texts = [x for pair in value.items() for x in pair if isinstance(x, str)]
        elif field.type == FieldDescriptor.TYPE_STRING:
            texts = list(value) if field.is_repeated else [value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            for index, item in enumerate(items):
                _refuse_nul(item, f"{name}[{index}]." if field.is_repeated else f"{name}.")
            continue
        else:
            continue
        if any("\x00" in text for text in texts):
            raise InvalidInput(f"{name} must not contain NUL (U+0000) characters")


def _is_map(field: FieldDescriptor) -> bool:
    entry = field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None
    return entry is not None and bool(entry.GetOptions().map_entry)


def _check_unary(request: Any) -> Any:
    request = _check(request)
    _refuse_nul(request)
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        yield _check(request)


Handler = Callable[..., Any]


def _unary_request(behavior: Handler) -> Handler:
    def wrapper(request: Any, context: Any) -> Any:
        return behavior(_check_unary(request), context)

    return wrapper


def _stream_request(behavior: Handler) -> Handler:
    def wrapper(requests: AsyncIterator[Any], context: Any) -> Any:
        return behavior(_checked_stream(requests), context)

    return wrapper


class DecodingInterceptor(WrappingInterceptor):
    """Put it inside the ErrorMappingInterceptor (and the auth one)."""

    def wrap(self, handler: MethodHandler, method: str) -> MethodHandler:
        if handler.request_deserializer is None:
            return handler
        changes: dict[str, Any] = {
            "request_deserializer": _guard_deserializer(handler.request_deserializer)
        }
        if handler.unary_unary is not None:
            changes["unary_unary"] = _unary_request(handler.unary_unary)
        elif handler.unary_stream is not None:
            changes["unary_stream"] = _unary_request(handler.unary_stream)
        elif handler.stream_unary is not None:
            changes["stream_unary"] = _stream_request(handler.stream_unary)
        elif handler.stream_stream is not None:
            changes["stream_stream"] = _stream_request(handler.stream_stream)
        return handler._replace(**changes)  # type: ignore[attr-defined,no-any-return]
