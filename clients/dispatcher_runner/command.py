"""The ``dispatcher-runner`` command: a build machine that runs jobs' command lines.

The first SIGTERM or SIGINT lets the running jobs finish, then says Goodbye; a second one
kills them (SIGTERM, then SIGKILL after ``--kill-grace``) and leaves at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from pathlib import Path

import click

from dispatcher_runner import host_platform
from dispatcher_runner.process import DEFAULT_KILL_GRACE
from dispatcher_runner.runner import DEFAULT_SERVER, Runner, RunnerConfig, RunnerError

log = logging.getLogger(__name__)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--server",
    envvar="DISPATCHER_SERVER",
    default=DEFAULT_SERVER,
    show_default=True,
    show_envvar=True,
    help="The dispatcher's address, host:port. Replicas: several, comma-separated"
    " (host1:port1,host2:port2); the runner moves to the next when a stream fails.",
)
@click.option(
    "--name",
    default=socket.gethostname,
    show_default="this host's name",
    help="Unique per build machine; a second runner with the same name replaces the first.",
)
@click.option(
    "--platform",
    default=host_platform,
    show_default=host_platform(),
    help="The platform jobs must ask for to run here.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="LABEL",
    help="A label this machine offers; repeat for more. Jobs need all of theirs.",
)
@click.option(
    "--capacity",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many jobs to run at once.",
)
@click.option(
    "--token",
    envvar="DISPATCHER_TOKEN",
    show_envvar=True,
    help="A runner token (prefer the environment variable: arguments are visible to ps).",
)
@click.option(
    "--ca-file",
    "tls_ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DISPATCHER_CA_FILE",
    show_envvar=True,
    help="Connect with TLS, trusting this CA bundle (PEM). Default: plaintext.",
)
@click.option(
    "--cert-file",
    "tls_cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DISPATCHER_CERT_FILE",
    show_envvar=True,
    help="Mutual TLS: this runner's certificate (PEM), with --key-file.",
)
@click.option(
    "--key-file",
    "tls_key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="DISPATCHER_KEY_FILE",
    show_envvar=True,
    help="Mutual TLS: the certificate's private key (PEM).",
)
@click.option(
    "--kill-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_KILL_GRACE,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when a job is cancelled.",
)
@click.option("--once", is_flag=True, help="Leave after the first job has ended.")
@click.option(
    "--exit-when-drained",
    is_flag=True,
    help="When the dispatcher drains this runner, leave once its jobs have ended"
    " (default: stay connected until undrained).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debugging detail.")
def main(
    server: str,
    name: str,
    platform: str,
    labels: tuple[str, ...],
    capacity: int,
    token: str | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    kill_grace: float,
    once: bool,
    exit_when_drained: bool,
    verbose: bool,
) -> None:
    """Run jobs from a dispatcher on this machine until stopped."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = RunnerConfig(
            server=server,
            name=name,
            platform=platform,
            labels=labels,
            capacity=capacity,
            token=token or None,
            tls_ca_file=tls_ca,
            tls_cert_file=tls_cert,
            tls_key_file=tls_key,
            kill_grace=kill_grace,
            stop_after_jobs=1 if once else None,
            leave_when_drained=exit_when_drained,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        asyncio.run(_serve(Runner(config)))
    except RunnerError as exc:
        raise click.ClickException(str(exc)) from exc


async def _serve(runner: Runner) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if runner.stopping:
            log.warning("%s again: killing running jobs", signum.name)
            runner.stop(abandon=True)
        else:
            log.info("%s: leaving after the running jobs (send again to kill them)", signum.name)
            runner.stop()

    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await runner.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
