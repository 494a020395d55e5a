"""Commands that run against the database directly: serve, migrate."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import click

from dispatcher.domain.errors import DispatcherError
from dispatcher.settings import Settings

_config = click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DISPATCHER_CONFIG",
    help="TOML config file (see dispatcher.example.toml).",
)
_database = click.option(
    "--database",
    "database_url",
    metavar="URL",
    help="SQLAlchemy database URL [default: sqlite:///dispatcher.db; env DISPATCHER_DATABASE_URL]",
)


def register(group: click.Group) -> None:
    group.add_command(serve)
    group.add_command(migrate)
    group.add_command(config)


@click.command()
@_config
@_database
@click.option("--listen", metavar="HOST:PORT", help="gRPC address [default: 127.0.0.1:50051].")
@click.option(
    "--http-listen",
    metavar="HOST:PORT",
    help="Status page and /metrics address [default: 127.0.0.1:8080].",
)
@click.option("--no-http", is_flag=True, help="No status page, /metrics or /healthz.")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "text"]),
    help="Log lines as JSON or text [default: auto: text on a terminal, else JSON].",
)
@click.option(
    "--migrate/--no-migrate",
    "migrate_on_start",
    default=None,
    help="Apply pending migrations first [default: yes on SQLite, no on PostgreSQL].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def serve(
    config_path: Path | None,
    database_url: str | None,
    listen: str | None,
    http_listen: str | None,
    no_http: bool,
    log_format: str | None,
    migrate_on_start: bool | None,
    verbose: bool,
) -> None:
    """Run the dispatcher until SIGTERM or SIGINT."""
    from dispatcher import logs
    from dispatcher.app import serve as run

    settings = _load(
        config_path,
        database_url=database_url,
        listen=listen,
        http_listen="" if no_http else http_listen,
        log_format=log_format,
        migrate_on_start=migrate_on_start,
    )
    logs.configure(settings.log_format, logging.DEBUG if verbose else logging.INFO)
    _tune_gc()
    try:
        asyncio.run(run(settings))
    except DispatcherError as exc:
        raise click.ClickException(str(exc)) from None


# Containers allocated, less those freed, before a young collection. Every job moves
# through short-lived rows, dataclasses and protobuf messages by the dozen; at the default
# (700) a busy server spent about 7% of its CPU collecting, most of it on objects that
# would have died a moment later.
GC_YOUNG_THRESHOLD = 10_000


def _tune_gc() -> None:
    """Fewer, cheaper collections for a long-running server: what the imports built
    (modules, tables, compiled statements, descriptors) lives as long as the process, so
    it is moved out of the collector's sight, and the young generation is let grow."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


@click.command()
@_config
@_database
def migrate(config_path: Path | None, database_url: str | None) -> None:
    """Bring the database schema up to date."""
    from dispatcher.store import migrate as migrations
    from dispatcher.store.database import Database

    settings = Settings.load(config_path, database_url=database_url)
    db = Database(settings.database_url)
    try:
        before = migrations.current_revision(db)
        migrations.upgrade(db)
        after = migrations.current_revision(db)
    finally:
        db.close()
    if before == after:
        click.echo(f"schema already current (revision {after})")
    else:
        click.echo(f"schema migrated from {before or 'empty'} to {after}")


@click.group()
def config() -> None:
    """Check configuration files."""


@config.command("check")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def check(path: Path) -> None:
    """Validate the TOML config file PATH and explain each error; exit 1 if any."""
    _load(path)
    click.echo(f"{path}: OK")


def _load(path: Path | None, **overrides: object) -> Settings:
    """Settings, with every distributor instance checked (SPEC §7); a ClickException
    (exit 1) that explains each problem otherwise."""
    import tomllib

    from pydantic import ValidationError

    from dispatcher.distributors.setup import check_settings

    try:
        settings = Settings.load(path, **overrides)
    except tomllib.TOMLDecodeError as exc:
        raise click.ClickException(f"{path}: not valid TOML: {exc}") from None
    except ValidationError as exc:
        lines = [f"{path}: {exc.error_count()} error(s):"]
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(file)"
            lines.append(f"  {where}: {error['msg']}")
        raise click.ClickException("\n".join(lines)) from None
    try:
        check_settings(settings.distributors)
    except DispatcherError as exc:
        raise click.ClickException(f"{path or 'settings'}: {exc}") from None
    return settings
