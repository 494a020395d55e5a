"""`dispatcher distributors list|validate`: the backends jobs may run on (SPEC §7, §8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from google.protobuf import struct_pb2

from dispatcher.cli import output
from dispatcher.cli.client import EXIT_CODES_HELP, Admin, admin_command
from dispatcher.v1 import distributor_pb2, distributor_pb2_grpc


def register(group: click.Group) -> None:
    group.add_command(distributors)


@click.group(epilog=EXIT_CODES_HELP)
def distributors() -> None:
    """The runner pool and the configured adapters: their health and their configs."""


def _stub(admin: Admin) -> Any:
    return distributor_pb2_grpc.DistributorStub(admin.channel)


@distributors.command("list")
@admin_command
@click.option("--json", "as_json", is_flag=True, help="Print JSON (proto field names).")
def list_distributors(admin: Admin, as_json: bool) -> None:
    """List distributors: kind, parallelism, up or down since when and why."""
    found = admin.call_on(_stub(admin).ListDistributors, distributor_pb2.ListDistributorsRequest())
    if as_json:
        click.echo(output.to_json(found))
        return
    rows = [
        [
            d.name,
            d.kind or "-",
            str(d.parallelism or "-"),
            "up" if d.up else f"down since {output.timestamp(d.down_since)}",
            d.cause or "",
        ]
        for d in found.distributors
    ]
    click.echo(output.table(["NAME", "KIND", "PARALLELISM", "HEALTH", "CAUSE"], rows))


@distributors.command("validate")
@admin_command
@click.argument("kind")
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def validate_config(admin: Admin, kind: str, config_file: Path) -> None:
    """Check CONFIG_FILE (a JSON object) as the config of an adapter of KIND."""
    try:
        data = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="CONFIG_FILE") from None
    if not isinstance(data, dict):
        raise click.BadParameter("must hold a JSON object", param_hint="CONFIG_FILE")
    config = struct_pb2.Struct()
    config.update(data)
    request = distributor_pb2.ValidateConfigRequest(kind=kind, config=config)
    admin.call_on(_stub(admin).ValidateConfig, request)
    click.echo(f"valid {kind} config")
