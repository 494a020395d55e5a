"""Channels that carry a token: the right role's token for each service, as a client
interceptor adds it to every call's metadata."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from dispatcher.domain.tokens import Role

# The service each role is for (the README's table): which token a call carries.
ROLE_OF_SERVICE = {
    "dispatcher.v1.Admin": Role.ADMIN,
    "dispatcher.v1.Scheduler": Role.RUNNER,
    "dispatcher.v1.Distributor": Role.DISTRIBUTOR,
}


@dataclass(frozen=True)
class RoleTokens:
    """One secret per role."""

    runner: str
    distributor: str
    admin: str

    def of(self, role: Role) -> str:
        return str(getattr(self, role.value))

    def for_method(self, method: str) -> str | None:
        role = ROLE_OF_SERVICE.get(method.split("/")[1]) if method.count("/") == 2 else None
        return self.of(role) if role is not None else None

    def env(self, role: Role) -> dict[str, str]:
        return {"DISPATCHER_TOKEN": self.of(role)}


def _with_token(details: Any, secret: str | None, *, aio: bool) -> Any:
    """The call's details with ``authorization`` replaced; both kinds are namedtuples."""
    if secret is None:
        return details
    pairs = [(k, v) for k, v in (details.metadata or ()) if k != "authorization"]
    pairs.append(("authorization", f"Bearer {secret}"))
    return details._replace(metadata=grpc.aio.Metadata(*pairs) if aio else pairs)


class _TokenPicker:
    def __init__(self, tokens: RoleTokens | None, role: Role | None, secret: str | None) -> None:
        self._tokens = tokens
        self._role = role
        self._secret = secret

    def secret(self, method: Any) -> str | None:
        if self._secret is not None:
            return self._secret
        if self._tokens is None:
            return None
        if self._role is not None:
            return self._tokens.of(self._role)
        name = method.decode() if isinstance(method, bytes) else str(method)
        return self._tokens.for_method(name)


class _AioBase:
    def __init__(self, picker: _TokenPicker) -> None:
        self._picker = picker

    def _details(self, details: Any) -> Any:
        return _with_token(details, self._picker.secret(details.method), aio=True)

    async def _intercept(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


# grpc.aio files an interceptor under the first kind it is, so one class per kind.
class _AioUnaryUnary(_AioBase, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AioBase._intercept


class _AioUnaryStream(_AioBase, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AioBase._intercept


class _AioStreamUnary(_AioBase, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AioBase._intercept


class _AioStreamStream(_AioBase, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AioBase._intercept


def authenticated_channel(
    address: str,
    tokens: RoleTokens | None = None,
    *,
    role: Role | None = None,
    secret: str | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
) -> grpc.aio.Channel:
    """An aio channel whose calls carry ``secret``, or the ``role``'s token, or else the
    token of the role each service needs."""
    picker = _TokenPicker(tokens, role, secret)
    interceptors: list[Any] = [
        kind(picker)
        for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    ]
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


class _SyncTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
    grpc.StreamStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, picker: _TokenPicker) -> None:
        self._picker = picker

    def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        secret = self._picker.secret(details.method)
        return continuation(_with_token(details, secret, aio=False), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


def authenticated_sync_channel(address: str, tokens: RoleTokens) -> grpc.Channel:
    """A blocking channel whose calls carry the token each service needs."""
    return grpc.intercept_channel(
        grpc.insecure_channel(address), _SyncTokenInterceptor(_TokenPicker(tokens, None, None))
    )
