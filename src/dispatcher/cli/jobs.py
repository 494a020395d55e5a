"""Commands that talk to a running dispatcher over gRPC: submit, jobs, runners, server.

Each command makes Admin calls through ``client.admin_command`` (connection options,
error messages, exit codes) and prints through ``output`` (people) or ``--json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import click

from dispatcher.cli import output
from dispatcher.cli.client import (
    EXIT_CODES_HELP,
    EXIT_JOB_NOT_SUCCEEDED,
    Admin,
    JobNotSucceeded,
    admin_command,
)
from dispatcher.domain.states import JobState
from dispatcher.v1 import admin_pb2, types_pb2
from dispatcher_runner import host_platform

# Pages asked for when following next_page_token (the server allows 1..1000).
PAGE_SIZE = 500
DEFAULT_LIMIT = 100
# --wait polls GetJob, starting quickly and backing off to this.
POLL_FIRST_SECONDS = 0.1
POLL_MAX_SECONDS = 2.0


def register(group: click.Group) -> None:
    group.add_command(submit)
    group.add_command(jobs)
    group.add_command(runners)
    group.add_command(server_group)
    if group.epilog is None:
        group.epilog = EXIT_CODES_HELP


# --- Option types ---------------------------------------------------------------------------

V = TypeVar("V", bound=int)


class _ProtoEnum(Protocol[V]):
    def items(self) -> list[tuple[str, V]]: ...


class EnumName(click.ParamType[V]):
    """A proto enum value by its short name, any case, ``-`` or ``_``: ``not-for-us``."""

    name = "name"

    def __init__(self, enum: _ProtoEnum[V]) -> None:
        pairs = enum.items()
        prefix = next(n for n, _ in pairs if n.endswith("_UNSPECIFIED")).removesuffix("UNSPECIFIED")
        self.values = {
            _cli_name(n.removeprefix(prefix)): v for n, v in pairs if not n.endswith("UNSPECIFIED")
        }

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "[" + "|".join(self.values) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> V:
        found = self.values.get(_cli_name(str(value)))
        if found is None:
            self.fail(f"{value!r} is not one of {', '.join(self.values)}", param, ctx)
        return found


def _cli_name(name: str) -> str:
    return name.strip().lower().replace("_", "-")


class IsoTime(click.ParamType[datetime]):
    """An ISO 8601 time; without a zone it is local time."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not an ISO 8601 time (2024-05-01T12:00:00Z)", param, ctx)
        return parsed if parsed.tzinfo else parsed.astimezone()


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (proto field names) for scripts."
    )(func)


_JOB_ID = click.argument("job_id", metavar="ID", type=click.IntRange(min=1))


# --- submit ---------------------------------------------------------------------------------


@click.command(
    context_settings={"allow_interspersed_args": False},
    epilog=EXIT_CODES_HELP,
)
@admin_command
@click.option(
    "--platform",
    default=host_platform,
    show_default="this machine's, e.g. linux/x86_64",
    help="Only a runner of this platform may take the job.",
)
@click.option(
    "--label", "labels", multiple=True, metavar="LABEL", help="Required runner label (repeat)."
)
@click.option("--queue", default="", help="Grouping for listing and metrics.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher runs first.")
@click.option(
    "--on-lost",
    type=EnumName(types_pb2.OnLostPolicy),
    help="What to do if the runner is lost mid-build [default: the server's].",
)
@click.option("--idempotency-key", default="", metavar="KEY", help="Submit at most once per KEY.")
@click.option("--not-before", type=IsoTime(), help="Not runnable before this ISO 8601 time.")
@click.option(
    "--coalesce-key",
    "coalesce_keys",
    multiple=True,
    metavar="KEY",
    help="Never build at once with another job holding KEY (repeat).",
)
@click.option("--dedupe-key", default="", metavar="KEY", help="One piece of work per KEY.")
@click.option("--subject", default="", help="What the job works on (back-offs).")
@click.option("--process", default="", help="What it does to the subject (back-offs).")
@click.option(
    "--attempts",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Runner-reported failures allowed before FAILED (retries with back-off).",
)
@click.option("--max-wait", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS")
@click.option("--max-run", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS")
@click.option("--wait", is_flag=True, help="Wait until the job ends; exit 4 unless it succeeded.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="With --wait: give up after this long [default: wait forever].",
)
@_json_option
@click.argument("command", nargs=-1, required=True)
def submit(
    admin: Admin,
    platform: str,
    labels: tuple[str, ...],
    queue: str,
    priority: int,
    on_lost: types_pb2.OnLostPolicy.ValueType | None,
    idempotency_key: str,
    not_before: datetime | None,
    coalesce_keys: tuple[str, ...],
    dedupe_key: str,
    subject: str,
    process: str,
    attempts: int,
    max_wait: float | None,
    max_run: float | None,
    wait: bool,
    timeout: float | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Submit a job that runs COMMAND on a runner.

    Put `--` before COMMAND so that its options stay its own:

    \b
        dispatcher submit --label big -- make -j8 check

    Prints the job's id and state (`job 12 QUEUED`). With --wait, then waits for the
    job to end, prints its final state, and exits 0 only if it succeeded.
    """
    if timeout is not None and not wait:
        raise click.UsageError("--timeout only applies with --wait")
    spec = types_pb2.JobSpec(
        platform=platform,
        labels=labels,
        queue=queue,
        priority=priority,
        command=command,
        idempotency_key=idempotency_key,
        on_lost=on_lost or types_pb2.ON_LOST_POLICY_UNSPECIFIED,
        coalesce_keys=coalesce_keys,
        dedupe_key=dedupe_key,
        subject=subject,
        process=process,
        retry=types_pb2.RetryPolicy(max_attempts=attempts),
    )
    if not_before is not None:
        spec.not_before.FromDatetime(not_before)
    if max_wait is not None:
        spec.max_wait.FromTimedelta(timedelta(seconds=max_wait))
    if max_run is not None:
        spec.max_run.FromTimedelta(timedelta(seconds=max_run))
    response = admin.submit_job(spec)
    if not wait:
        click.echo(output.to_json(response.job) if as_json else _submitted(response))
        return
    if not as_json:
        click.echo(_submitted(response))
    job = _wait_for_end(admin, response.job, timeout)
    if as_json or _terminal(job):
        click.echo(output.to_json(job) if as_json else output.job_line(job))
    _exit_unless_succeeded(job, timeout)


def _submitted(response: admin_pb2.SubmitJobResponse) -> str:
    note = "" if response.created else " (already submitted with this idempotency key)"
    return output.job_line(response.job) + note


def _terminal(job: types_pb2.Job) -> bool:
    return JobState(output.state_label(job.state)).terminal


def _wait_for_end(admin: Admin, job: types_pb2.Job, timeout: float | None) -> types_pb2.Job:
    """Poll GetJob until the job is terminal or ``timeout`` seconds have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = POLL_FIRST_SECONDS
    while not _terminal(job):
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            break
        time.sleep(delay if remaining is None else min(delay, remaining))
        delay = min(delay * 1.5, POLL_MAX_SECONDS)
        job = admin.get_job(job.id)
    return job


def _exit_unless_succeeded(job: types_pb2.Job, timeout: float | None) -> None:
    if not _terminal(job):
        raise JobNotSucceeded(
            f"gave up after {timeout:g}s: job {job.id} is still {output.state_label(job.state)}"
        )
    if job.state != types_pb2.JOB_STATE_SUCCEEDED:
        click.get_current_context().exit(EXIT_JOB_NOT_SUCCEEDED)


# --- jobs -----------------------------------------------------------------------------------


@click.group(epilog=EXIT_CODES_HELP)
def jobs() -> None:
    """List, inspect and cancel jobs."""


@jobs.command("list")
@admin_command
@click.option(
    "--status",
    "states",
    multiple=True,
    type=EnumName(types_pb2.JobState),
    help="Only jobs in this state (repeat for any of several).",
)
@click.option("--queue", default="", help="Only jobs in this queue.")
@click.option("--platform", default="", help="Only jobs for this platform.")
@click.option("--label", "labels", multiple=True, metavar="LABEL", help="Only jobs with LABEL.")
@click.option("--runner", default="", help="Only jobs held by this runner.")
@click.option("--flavor", default="", help="Only jobs assigned to this flavor.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    help=f"Show at most this many, newest first [default: {DEFAULT_LIMIT}].",
)
@click.option("--all", "everything", is_flag=True, help="Show every matching job.")
@click.option("--page-token", default="", metavar="TOKEN", help="Continue an earlier listing.")
@_json_option
def list_jobs(
    admin: Admin,
    states: tuple[types_pb2.JobState.ValueType, ...],
    queue: str,
    platform: str,
    labels: tuple[str, ...],
    runner: str,
    flavor: str,
    limit: int | None,
    everything: bool,
    page_token: str,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    if everything and limit is not None:
        raise click.UsageError("--all and --limit do not go together")
    request = admin_pb2.ListJobsRequest(
        states=states,
        queue=queue,
        platform=platform,
        labels=labels,
        runner=runner,
        flavor=flavor,
        page_token=page_token,
    )
    found = _collect(admin, request, None if everything else limit or DEFAULT_LIMIT)
    if as_json:
        click.echo(output.to_json(found))
        return
    click.echo(output.job_table(found.jobs, datetime.now(UTC)) if found.jobs else "no jobs")
    if found.next_page_token:
        click.echo(
            f"more jobs match: --all, a larger --limit, or --page-token {found.next_page_token}",
            err=True,
        )


def _collect(
    admin: Admin, request: admin_pb2.ListJobsRequest, limit: int | None
) -> admin_pb2.ListJobsResponse:
    """Follow next_page_token until ``limit`` jobs (or all of them, for None)."""
    found = admin_pb2.ListJobsResponse()
    while True:
        wanted = PAGE_SIZE if limit is None else limit - len(found.jobs)
        request.page_size = min(wanted, PAGE_SIZE)
        page = admin.list_jobs(request)
        found.jobs.extend(page.jobs)
        found.next_page_token = page.next_page_token
        if not page.next_page_token or (limit is not None and len(found.jobs) >= limit):
            return found
        request.page_token = page.next_page_token


@jobs.command("show")
@admin_command
@_JOB_ID
@_json_option
def show_job(admin: Admin, job_id: int, as_json: bool) -> None:
    """Show one job: its spec, executions, history and last output."""
    job = admin.get_job(job_id)
    click.echo(output.to_json(job) if as_json else output.job_detail(job))


@jobs.command("cancel")
@admin_command
@_JOB_ID
@click.option("--reason", default="", help="Why, for the job's history.")
@_json_option
def cancel_job(admin: Admin, job_id: int, reason: str, as_json: bool) -> None:
    """Cancel a job. A building job ends once its runner confirms."""
    job = admin.cancel_job(job_id, reason)
    if as_json:
        click.echo(output.to_json(job))
        return
    pending = "" if _terminal(job) else " (cancelling: its runner has been told to stop)"
    click.echo(output.job_line(job) + pending)


# --- runners --------------------------------------------------------------------------------


@click.group(epilog=EXIT_CODES_HELP)
def runners() -> None:
    """See the build machines connected to the dispatcher."""


@runners.command("list")
@admin_command
@_json_option
def list_runners(admin: Admin, as_json: bool) -> None:
    """List runners, online ones first."""
    found = admin.list_runners()
    if as_json:
        click.echo(output.to_json(admin_pb2.ListRunnersResponse(runners=found)))
    else:
        click.echo(output.runner_table(found, datetime.now(UTC)) if found else "no runners")


@runners.command("drain")
@admin_command
@click.argument("name")
@click.option("--reason", default="", help="Why, for the runner's log and the history.")
@_json_option
def drain_runner(admin: Admin, name: str, reason: str, as_json: bool) -> None:
    """Let runner NAME finish what it holds and give it nothing new."""
    _show_runner(admin.drain_runner(name, reason), as_json)


@runners.command("undrain")
@admin_command
@click.argument("name")
@_json_option
def undrain_runner(admin: Admin, name: str, as_json: bool) -> None:
    """Give runner NAME work again."""
    _show_runner(admin.undrain_runner(name), as_json)


def _show_runner(runner: types_pb2.Runner, as_json: bool) -> None:
    if as_json:
        click.echo(output.to_json(runner))
    else:
        state = output.enum_label(types_pb2.RunnerState.DESCRIPTOR, runner.state)
        click.echo(f"runner {runner.name} {state}")


# --- server ---------------------------------------------------------------------------------


@click.group("server", epilog=EXIT_CODES_HELP)
def server_group() -> None:
    """Ask a running dispatcher about itself."""


@server_group.command("info")
@admin_command
@_json_option
def server_info(admin: Admin, as_json: bool) -> None:
    """Version, database, replica id and uptime."""
    info = admin.server_info()
    click.echo(output.to_json(info) if as_json else output.server_info(info))
