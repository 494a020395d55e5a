"""Who may call what (SPEC §11): one server interceptor, driven by one table.

Every RPC carries ``authorization: Bearer <token>`` metadata, except the standard
health and reflection services, which stay open so that load balancers and grpcurl work
without a secret. ``ROLES`` says which roles may call each method; it is built from the
proto descriptors, so a new RPC gets its service's role without an edit here, and a
method of a service missing from ``SERVICE_ROLES`` is refused to everyone.

Streams (Scheduler.Connect) outlive the check at their start, so the interceptor keeps
a count of open streams per token (``limits.max_streams_per_token``) and closes a
token's streams when it is deleted: at once when deleted through this replica, and
within ``stream_recheck_seconds`` when deleted through another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

import grpc

from dispatcher.api.handlers import MethodHandler, WrappingInterceptor, with_behavior
from dispatcher.domain.errors import LimitExceeded, PermissionDenied, Unauthenticated
from dispatcher.domain.tokens import Role, Token
from dispatcher.lifecycle.tokens import Tokens
from dispatcher.v1 import admin_pb2, distributor_pb2, scheduler_pb2

# The token of the call being served (each call runs in its own task, with its own
# context): the audit trail names who acted.
_caller: ContextVar[Token | None] = ContextVar("dispatcher_caller", default=None)


def caller_name() -> str:
    """The name of the token the current call presented, for the events it writes."""
    token = _caller.get()
    return token.name if token is not None else "admin"


log = logging.getLogger(__name__)

# The services anyone may call, token or not.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

_ADMIN = admin_pb2.DESCRIPTOR.services_by_name["Admin"]
_SCHEDULER = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"]
_DISTRIBUTOR = distributor_pb2.DESCRIPTOR.services_by_name["Distributor"]

# Each role reaches one service...
SERVICE_ROLES: Mapping[Any, frozenset[Role]] = {
    _ADMIN: frozenset({Role.ADMIN}),
    _SCHEDULER: frozenset({Role.RUNNER}),
    _DISTRIBUTOR: frozenset({Role.DISTRIBUTOR}),
}
# ...and these methods are open to more: operators list distributors too (read-only).
METHOD_ROLES: Mapping[str, frozenset[Role]] = {
    "/dispatcher.v1.Distributor/ListDistributors": frozenset({Role.DISTRIBUTOR, Role.ADMIN}),
    "/dispatcher.v1.Distributor/ValidateConfig": frozenset({Role.DISTRIBUTOR, Role.ADMIN}),
}


def _method_table() -> dict[str, frozenset[Role]]:
    table = {
        f"/{service.full_name}/{method.name}": roles
        for service, roles in SERVICE_ROLES.items()
        for method in service.methods
    }
    unknown = set(METHOD_ROLES) - set(table)
    if unknown:
        raise ValueError(f"METHOD_ROLES names methods that do not exist: {sorted(unknown)}")
    return {**table, **METHOD_ROLES}


# The one table: method path -> the roles that may call it.
ROLES: Mapping[str, frozenset[Role]] = _method_table()


def is_open(method: str) -> bool:
    return method.split("/")[1] in OPEN_SERVICES if method.count("/") == 2 else False


def bearer_secret(metadata: Any) -> str:
    """The token in ``authorization: Bearer <token>``; Unauthenticated without one."""
    for key, value in metadata or ():
        if key != "authorization":
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        scheme, _, secret = text.strip().partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthenticated("the authorization metadata must read 'Bearer <token>'")
        return secret.strip()
    raise Unauthenticated(
        "no token: send 'authorization: Bearer <token>' metadata (an admin creates "
        "tokens with `dispatcher tokens create NAME --role ROLE`)"
    )


def _check_role(method: str, token: Token) -> None:
    allowed = ROLES.get(method)
    if allowed is None:
        raise PermissionDenied(f"{method} is not open to any token role")
    if token.role not in allowed:
        names = " or ".join(sorted(r.value for r in allowed))
        raise PermissionDenied(
            f"token {token.name!r} has the role {token.role.value}; {method} needs {names}"
        )


class _Streams:
    """The open streams of each token on this replica, to count and to cut."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[int, set[asyncio.Task[Any]]] = defaultdict(set)
        self.revoked: set[asyncio.Task[Any]] = set()

    def token_ids(self) -> list[int]:
        return [token_id for token_id, tasks in self._open.items() if tasks]

    @contextlib.contextmanager
    def hold(self, token: Token) -> Iterator[None]:
        tasks = self._open[token.id]
        if len(tasks) >= self.limit:
            raise LimitExceeded(
                f"token {token.name!r} already holds {len(tasks)} open streams, the limit "
                f"(limits.max_streams_per_token = {self.limit}); close one, or give each "
                "runner its own token"
            )
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a stream is served outside of a task")
        tasks.add(task)
        try:
            yield
        finally:
            tasks.discard(task)
            self.revoked.discard(task)
            if not tasks:
                self._open.pop(token.id, None)

    def cut(self, token_id: int) -> None:
        for task in self._open.get(token_id, set()):
            if task not in self.revoked:
                self.revoked.add(task)
                task.cancel()


Handler = Callable[..., Any]


class AuthInterceptor(WrappingInterceptor):
    """Checks the token and its role before any servicer runs. Put it inside the
    ErrorMappingInterceptor, which turns its refusals into status codes."""

    def __init__(
        self, tokens: Tokens, *, max_streams_per_token: int, recheck_seconds: float
    ) -> None:
        self._tokens = tokens
        self._streams = _Streams(max_streams_per_token)
        self._recheck_seconds = recheck_seconds
        self._recheck_task: asyncio.Task[None] | None = None
        tokens.on_deleted.append(self._streams.cut)

    def start(self) -> None:
        self._recheck_task = asyncio.create_task(self._recheck_streams())

    async def stop(self) -> None:
        if self._recheck_task is not None:
            self._recheck_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recheck_task

    async def _recheck_streams(self) -> None:
        """Cut the streams of tokens deleted through other replicas."""
        while True:
            await asyncio.sleep(self._recheck_seconds)
            held = self._streams.token_ids()
            if not held:
                continue
            try:
                existing = await self._tokens.existing(held)
            except Exception:
                log.warning("could not re-check the tokens of open streams", exc_info=True)
                continue
            for token_id in set(held) - existing:
                log.info("token %d was deleted; closing its streams", token_id)
                self._tokens.forget(token_id)

    async def _authorise(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Token:
        secret = bearer_secret(context.invocation_metadata())
        return await self._tokens.verify(secret, lambda token: _check_role(method, token))

    def wrap(self, handler: MethodHandler, method: str) -> MethodHandler:
        if is_open(method):
            return handler
        return with_behavior(
            handler,
            unary_response=lambda behavior: self._unary(behavior, method),
            streaming_response=lambda behavior: self._streaming(behavior, method),
        )

    def _unary(self, behavior: Handler, method: str) -> Handler:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            _caller.set(await self._authorise(method, context))
            return await behavior(request, context)

        return wrapper

    def _streaming(self, behavior: Handler, method: str) -> Handler:
        streams = self._streams

        async def wrapper(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            token = await self._authorise(method, context)
            _caller.set(token)
            with streams.hold(token):
                task = asyncio.current_task()
                try:
                    async for response in behavior(request, context):
                        yield response
                except asyncio.CancelledError:
                    if task not in streams.revoked:
                        raise
                    # Our own cut (the token was deleted), not the client leaving.
                    if task is not None:
                        task.uncancel()
                    raise Unauthenticated(
                        f"token {token.name!r} was deleted; this stream is closed"
                    ) from None

        return wrapper
