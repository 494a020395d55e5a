"""The one error mapping: domain errors to their codes; anything else to INTERNAL with an
incident id, never the exception's text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from dispatcher.api.errors import STATUS_OF, ErrorMappingInterceptor
from dispatcher.domain import errors

SERVICE = "test.Raiser"


def raising(exc: Exception) -> Callable[..., Any]:
    async def behavior(request: bytes, context: object) -> bytes:
        raise exc

    return behavior


def streaming(exc: Exception) -> Callable[..., Any]:
    async def behavior(request: bytes, context: object) -> AsyncIterator[bytes]:
        yield b"first"
        raise exc

    return behavior


CASES: dict[str, Exception] = {
    "invalid": errors.InvalidInput("spec.platform is required"),
    "missing": errors.NotFound("job 7 does not exist"),
    "stale": errors.StaleExecution("execution 3 is not current"),
    "limit": errors.LimitExceeded("more than 64 labels"),
    "down": errors.Unavailable("the database is unavailable"),
    "bug": RuntimeError("SELECT secret FROM tokens WHERE 1=1"),
}


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(raising(exc)) for name, exc in CASES.items()
    }
    handlers["stream"] = grpc.unary_stream_rpc_method_handler(streaming(RuntimeError("boom")))
    server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT),
        ("missing", grpc.StatusCode.NOT_FOUND),
        ("stale", grpc.StatusCode.FAILED_PRECONDITION),
        ("limit", grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("down", grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_domain_errors_keep_their_message(
    channel: grpc.aio.Channel, name: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/{name}")(b"")
    assert caught.value.code() == code
    assert caught.value.details() == str(CASES[name])


async def test_unexpected_errors_are_internal_with_an_incident_id_only(
    channel: grpc.aio.Channel,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/bug")(b"")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    details = caught.value.details() or ""
    assert details.startswith("internal error (incident ")
    assert "SELECT" not in details
    assert "Traceback" not in details


async def test_errors_in_server_streams_are_mapped_too(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(f"/{SERVICE}/stream")(b"")
    assert await call.read() == b"first"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INTERNAL


def test_every_error_kind_has_a_status() -> None:
    kinds = {
        cls
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.DispatcherError)
    }
    unmapped = {
        k
        for k in kinds - {errors.DispatcherError}
        if not any(issubclass(k, mapped) for mapped in STATUS_OF)
    }
    assert unmapped == set()
