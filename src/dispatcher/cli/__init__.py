"""The ``dispatcher`` command: server commands and client commands in one tool."""

from __future__ import annotations

import click

from dispatcher import __version__
from dispatcher.cli import distributors, jobs, operate, rules, server, tokens


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dispatcher")
def main() -> None:
    """Hand build jobs to build machines; one SQL database holds the truth."""


server.register(main)
jobs.register(main)
rules.register(main, jobs.jobs)
tokens.register(main)
operate.register(main, jobs.jobs, jobs.runners)
distributors.register(main)
