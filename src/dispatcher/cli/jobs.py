"""Commands that talk to a running dispatcher over gRPC: submit, jobs ..."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    pass
