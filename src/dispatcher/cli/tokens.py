"""``dispatcher tokens create|list|delete``.

One rule: through a running dispatcher's Admin service (``--server``, an admin
``--token``), like every other client command; or, with ``--database`` or ``--config``,
straight on the database, with no server and no token needed. The second is how the
first admin token is made, and how access is regained when every admin token is lost;
whoever can write the database can do that anyway.

A token deleted through a server is refused at once there; deleted on the database, it
is refused by each running server within its ``auth.cache_seconds``, and its streams
close within ``auth.stream_recheck_seconds``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from dispatcher.cli import output
from dispatcher.cli.client import EXIT_CODES_HELP, Endpoint, Refused, connect, endpoint_options
from dispatcher.domain.errors import DispatcherError, Unavailable
from dispatcher.domain.tokens import Role
from dispatcher.v1 import admin_pb2

T = TypeVar("T")

_ROLE_PB = {
    Role.RUNNER: admin_pb2.TOKEN_ROLE_RUNNER,
    Role.DISTRIBUTOR: admin_pb2.TOKEN_ROLE_DISTRIBUTOR,
    Role.ADMIN: admin_pb2.TOKEN_ROLE_ADMIN,
}


def register(group: click.Group) -> None:
    group.add_command(tokens)


@click.group(epilog=EXIT_CODES_HELP)
def tokens() -> None:
    """Create, list and delete the tokens that clients send.

    \b
    Roles: runner (Scheduler: build machines), distributor (Distributor:
    execution backends), admin (Admin: operators, other services).
    With --database URL or --config FILE the command works on the database
    directly (the first admin token: `dispatcher tokens create me --role admin
    --database sqlite:///dispatcher.db`); otherwise it asks the dispatcher at
    --server with an admin --token.
    """


def _target(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where the command works: ``--database``/``--config`` (direct) or the server."""

    @endpoint_options
    @click.option(
        "--database",
        "database_url",
        metavar="URL",
        help="Work on this database directly, without a server.",
    )
    @click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Work directly on the database this TOML config file names.",
    )
    @functools.wraps(func)
    def wrapper(
        *args: Any,
        endpoint: Endpoint,
        database_url: str | None,
        config_path: Path | None,
        **kwargs: Any,
    ) -> Any:
        direct = database_url is not None or config_path is not None
        target = _Direct(config_path, database_url) if direct else _Remote(endpoint)
        return func(*args, target=target, **kwargs)

    return wrapper


class _Remote:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def create(self, name: str, role: Role) -> admin_pb2.CreateTokenResponse:
        with connect(self.endpoint) as admin:
            return admin.create_token(name, _ROLE_PB[role])

    def list(self) -> list[admin_pb2.Token]:
        with connect(self.endpoint) as admin:
            return admin.list_tokens()

    def delete(self, name: str) -> admin_pb2.Token:
        with connect(self.endpoint) as admin:
            return admin.delete_token(name)


class _Direct:
    def __init__(self, config_path: Path | None, database_url: str | None) -> None:
        self.config_path = config_path
        self.database_url = database_url

    @contextmanager
    def _use_cases(self) -> Iterator[Any]:
        from dispatcher.app import prepare_database
        from dispatcher.domain.clock import SystemClock
        from dispatcher.domain.validation import Limits
        from dispatcher.lifecycle.batching import GroupCommit
        from dispatcher.lifecycle.context import Context
        from dispatcher.lifecycle.tokens import Tokens
        from dispatcher.settings import Settings

        settings = Settings.load(self.config_path, database_url=self.database_url)
        try:
            db = prepare_database(settings)
        except Unavailable as exc:
            raise Refused(str(exc)) from None
        try:
            ctx = Context(
                db=db,
                clock=SystemClock(),
                limits=Limits(),
                replica_id="cli",
                commits=GroupCommit(db),
            )
            yield Tokens(ctx, cache_seconds=0)
        finally:
            db.close()

    def _run(self, work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        with self._use_cases() as use_cases:
            try:
                return asyncio.run(work(use_cases))
            except DispatcherError as exc:
                raise Refused(str(exc)) from None

    def create(self, name: str, role: Role) -> admin_pb2.CreateTokenResponse:
        from dispatcher.api.convert import token_to_proto

        created = self._run(lambda t: t.create(name, role))
        return admin_pb2.CreateTokenResponse(
            token=token_to_proto(created.token), secret=created.secret
        )

    def list(self) -> list[admin_pb2.Token]:
        from dispatcher.api.convert import token_to_proto

        return [token_to_proto(t) for t in self._run(lambda t: t.list())]

    def delete(self, name: str) -> admin_pb2.Token:
        from dispatcher.api.convert import token_to_proto

        return token_to_proto(self._run(lambda t: t.delete(name)))


_json = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@tokens.command("create")
@_target
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    required=True,
    help="What the token may call.",
)
@_json
def create(target: _Remote | _Direct, name: str, role: str, as_json: bool) -> None:
    """Create token NAME and print its secret (shown only now) on stdout.

    \b
        export DISPATCHER_TOKEN=$(dispatcher tokens create me --role admin \\
            --database sqlite:///dispatcher.db)
    """
    created = target.create(name, Role(role))
    if as_json:
        click.echo(output.to_json(created))
        return
    click.echo(created.secret)
    click.echo(
        f"token {created.token.name!r} ({role}) created; its secret, above, is shown only "
        "now: send it as 'authorization: Bearer <secret>' (DISPATCHER_TOKEN)",
        err=True,
    )


@tokens.command("list")
@_target
@_json
def list_tokens(target: _Remote | _Direct, as_json: bool) -> None:
    """List tokens: names, roles and use; never secrets."""
    found = target.list()
    if as_json:
        click.echo(output.to_json(admin_pb2.ListTokensResponse(tokens=found)))
        return
    if not found:
        click.echo("no tokens")
        return
    now = datetime.now(UTC)
    rows = [
        (
            t.name,
            output.enum_label(admin_pb2.TokenRole.DESCRIPTOR, t.role),
            output.age(t.created_at, now),
            output.age(t.last_used_at, now) if t.HasField("last_used_at") else output.NONE,
        )
        for t in found
    ]
    click.echo(output.table(("NAME", "ROLE", "CREATED", "LAST USED"), rows))


@tokens.command("delete")
@_target
@click.argument("name")
def delete(target: _Remote | _Direct, name: str) -> None:
    """Delete token NAME: its calls are refused and its streams closed."""
    token = target.delete(name)
    click.echo(f"token {token.name!r} deleted")
