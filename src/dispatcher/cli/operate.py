"""Commands that act on jobs and runners beyond submit/list/cancel: watch the job
stream, retry, run now, delete pending, evict a runner, and submit a file of jobs in
batches (SPEC §8)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import click
import grpc
from google.protobuf.json_format import MessageToDict, Parse, ParseError

from dispatcher.cli import output
from dispatcher.cli.client import EXIT_CODES_HELP, Admin, admin_command
from dispatcher.cli.jobs import EnumName
from dispatcher.v1 import admin_pb2, types_pb2

# submit-batch against a server that does not say its limit (older versions).
FALLBACK_BATCH_SIZE = 100


def register(main: click.Group, jobs: click.Group, runners: click.Group) -> None:
    for command in (watch_jobs, retry_job, run_job_now, delete_job):
        jobs.add_command(command)
    runners.add_command(evict_runner)
    main.add_command(submit_batch)


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (proto field names) for scripts."
    )(func)


def _json_line(message: Any) -> str:
    """One message as one line of JSON, for scripts that read line by line; every field
    present (a cursor of 0 too), as ``output.to_json``."""
    as_dict = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(as_dict)


_JOB_ID = click.argument("job_id", metavar="ID", type=click.IntRange(min=1))


# --- jobs watch -----------------------------------------------------------------------------


def change_line(change: admin_pb2.WatchJobsResponse) -> str:
    """``41  2024-05-01 12:00:03Z  job 12 cancelled QUEUED→CANCELLED admin: wrong branch``"""
    e = change.event
    move = f" {output.state_label(e.from_state)}→{output.state_label(e.to_state)}"
    if not e.from_state and not e.to_state:
        move = ""
    cause = f": {e.cause}" if e.cause else ""
    return (
        f"{change.cursor}  {output.timestamp(e.at)}  job {e.job_id} {e.kind}{move} {e.actor}{cause}"
    )


@click.command("watch", epilog=EXIT_CODES_HELP)
@admin_command
@click.option(
    "--status",
    "states",
    multiple=True,
    type=EnumName(types_pb2.JobState),
    help="Only changes that moved a job into this state (repeat for several).",
)
@click.option("--queue", default="", help="Only jobs in this queue.")
@click.option("--platform", default="", help="Only jobs for this platform.")
@click.option("--label", "labels", multiple=True, metavar="LABEL", help="Only jobs with LABEL.")
@click.option(
    "--from",
    "after_cursor",
    type=click.IntRange(min=0),
    metavar="CURSOR",
    help="Replay the changes after CURSOR (printed with each change), then go on live "
    "[default: from now].",
)
@_json_option
def watch_jobs(
    admin: Admin,
    states: tuple[types_pb2.JobState.ValueType, ...],
    queue: str,
    platform: str,
    labels: tuple[str, ...],
    after_cursor: int | None,
    as_json: bool,
) -> None:
    """Print each job change as it happens, one line each, until Ctrl-C.

    Each line starts with its cursor: `--from CURSOR` resumes after it with nothing
    lost and nothing repeated. With --json, one JSON object per line; lines with only
    a cursor say how far the watch got (keep the newest cursor you saw).
    """
    request = admin_pb2.WatchJobsRequest(
        states=states, queue=queue, platform=platform, labels=labels
    )
    if after_cursor is not None:
        request.after_cursor = after_cursor
    stream = admin.watch_jobs(request)
    first = True
    try:
        for change in stream:
            if as_json:
                click.echo(_json_line(change))
            elif change.HasField("event"):
                click.echo(change_line(change))
            elif first:
                click.echo(f"# watching after cursor {change.cursor} (Ctrl-C ends)", err=True)
            first = False
            sys.stdout.flush()
    except KeyboardInterrupt:
        if isinstance(stream, grpc.Future):
            stream.cancel()


# --- jobs retry / run-now / delete ----------------------------------------------------------


@click.command("retry", epilog=EXIT_CODES_HELP)
@admin_command
@_JOB_ID
@click.option("--reason", default="", help="Why, for both jobs' histories.")
@_json_option
def retry_job(admin: Admin, job_id: int, reason: str, as_json: bool) -> None:
    """Run job ID again as a new job with the same spec (it must have ended FAILED,
    CANCELLED, IRRECOVERABLE or NOT_FOR_US; it keeps that state)."""
    found = admin.call("RetryJob", admin_pb2.RetryJobRequest(id=job_id, reason=reason))
    if as_json:
        click.echo(output.to_json(found))
    else:
        click.echo(f"{output.job_line(found.job)} (retry of job {found.retry_of})")


@click.command("run-now", epilog=EXIT_CODES_HELP)
@admin_command
@_JOB_ID
@_json_option
def run_job_now(admin: Admin, job_id: int, as_json: bool) -> None:
    """Make job ID, waiting for its due time, due now."""
    found = admin.call("RunJobNow", admin_pb2.RunJobNowRequest(id=job_id))
    if as_json:
        click.echo(output.to_json(found.job))
    else:
        click.echo(f"{output.job_line(found.job)} (due now)")


@click.command("delete", epilog=EXIT_CODES_HELP)
@admin_command
@_JOB_ID
@click.option("--reason", default="", help="Why, for the job's history.")
@_json_option
def delete_job(admin: Admin, job_id: int, reason: str, as_json: bool) -> None:
    """Take pending job ID (never started) out of the queue: it ends CANCELLED with a
    "deleted" event, and goes with the other finished jobs after the retention."""
    found = admin.call("DeleteJob", admin_pb2.DeleteJobRequest(id=job_id, reason=reason))
    click.echo(output.to_json(found.job) if as_json else output.job_line(found.job))


# --- runners evict --------------------------------------------------------------------------


@click.command("evict", epilog=EXIT_CODES_HELP)
@admin_command
@click.argument("name")
@click.option("--reason", default="", help="Why, for the histories of the jobs it held.")
@_json_option
def evict_runner(admin: Admin, name: str, reason: str, as_json: bool) -> None:
    """Cut runner NAME off now: its sessions close, the jobs it was building follow
    their on-lost policy, and it is OFFLINE until it connects again."""
    found = admin.call("EvictRunner", admin_pb2.EvictRunnerRequest(name=name, reason=reason))
    if as_json:
        click.echo(output.to_json(found))
        return
    state = output.enum_label(types_pb2.RunnerState.DESCRIPTOR, found.runner.state)
    click.echo(
        f"runner {found.runner.name} {state}: {found.closed_sessions} session(s) closed, "
        f"{len(found.jobs)} job(s) moved on"
    )
    for job in found.jobs:
        click.echo(f"  {output.job_line(job)}")


# --- submit-batch ---------------------------------------------------------------------------


def read_specs(file: IO[str]) -> list[tuple[int, types_pb2.JobSpec]]:
    """(line number, spec) for each non-blank line; a bad line stops before anything is
    sent."""
    specs = []
    for number, line in enumerate(file, start=1):
        if not line.strip():
            continue
        spec = types_pb2.JobSpec()
        try:
            Parse(line, spec)
        except ParseError as exc:
            raise click.UsageError(
                f"{file.name} line {number}: not a JobSpec in proto JSON: {exc}"
            ) from None
        specs.append((number, spec))
    if not specs:
        raise click.UsageError(f"{file.name}: no jobs (one JobSpec per line, in proto JSON)")
    return specs


@contextmanager
def _progress(total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield lambda _: None
        return
    with click.progressbar(length=total, label="submitting", file=sys.stderr) as bar:
        yield bar.update


@click.command("submit-batch", epilog=EXIT_CODES_HELP)
@admin_command
@click.argument("file", type=click.File("r"))
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    help="Jobs per SubmitJobs call [default and most: the server's max batch size].",
)
@_json_option
def submit_batch(admin: Admin, file: IO[str], chunk_size: int | None, as_json: bool) -> None:
    """Submit the jobs in FILE (`-`: stdin): one JobSpec per line, in proto JSON, e.g.

    \b
        {"platform": "linux/x86_64", "command": ["make", "check"], "queue": "ci"}

    They go in batches of the server's max batch size, each batch all or none. Prints a
    summary (with --json: the job ids too). If a batch is refused, the batches before it
    stay submitted, and the message says which lines they were.
    """
    specs = read_specs(file)
    limit = admin.server_info().max_batch_size or FALLBACK_BATCH_SIZE
    size = min(chunk_size or limit, limit)
    results: list[admin_pb2.SubmitJobResponse] = []
    with _progress(len(specs)) as advance:
        for start in range(0, len(specs), size):
            chunk = specs[start : start + size]
            request = admin_pb2.SubmitJobsRequest(specs=[s for _, s in chunk])
            try:
                response = admin.call("SubmitJobs", request)
            except grpc.RpcError:
                done = f"lines 1-{chunk[0][0] - 1}" if results else "none"
                click.echo(
                    f"\nthe batch of lines {chunk[0][0]}-{chunk[-1][0]} was refused (job N "
                    f"counts from its first line); {len(results)} job(s) submitted before it "
                    f"({done})",
                    err=True,
                )
                raise
            results.extend(response.results)
            advance(len(chunk))
    created = sum(r.created for r in results)
    states = Counter(output.state_label(r.job.state) for r in results)
    batches = -(-len(specs) // size)
    if as_json:
        summary = {
            "submitted": len(results),
            "created": created,
            "batches": batches,
            "states": dict(sorted(states.items())),
            "job_ids": [r.job.id for r in results],
        }
        click.echo(json.dumps(summary))
        return
    by_state = ", ".join(f"{state} {count}" for state, count in sorted(states.items()))
    click.echo(
        f"submitted {len(results)} job(s) in {batches} batch(es): {created} new, "
        f"{len(results) - created} already submitted; {by_state}"
    )
