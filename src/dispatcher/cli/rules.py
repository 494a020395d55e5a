"""Commands for the scheduling rules: flavors and pressure, schedules, back-offs, and a
job's history and explanation (SPEC §8, §10)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from google.protobuf.duration_pb2 import Duration

from dispatcher.cli import output
from dispatcher.cli.client import EXIT_CODES_HELP, Admin, admin_command
from dispatcher.v1 import admin_pb2, types_pb2
from dispatcher_runner import host_platform


def register(group: click.Group, jobs: click.Group) -> None:
    group.add_command(flavors)
    group.add_command(pressure)
    group.add_command(schedules)
    group.add_command(backoffs)
    jobs.add_command(explain_job)
    jobs.add_command(job_history)


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (proto field names) for scripts."
    )(func)


def seconds(value: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=value))
    return duration


def _echo(message: Any, as_json: bool, human: Callable[[], str]) -> None:
    click.echo(output.to_json(message) if as_json else human())


# --- jobs explain / history -------------------------------------------------------


@click.command("explain", epilog=EXIT_CODES_HELP)
@admin_command
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@_json_option
def explain_job(admin: Admin, job_id: int, as_json: bool) -> None:
    """Why job ID is not running: each reason on its own line."""
    found = admin.call("ExplainJob", admin_pb2.ExplainJobRequest(id=job_id))
    state = output.state_label(found.state)
    lines = [f"job {found.id} {state}"] + [f"  {r.code}: {r.text}" for r in found.reasons]
    _echo(found, as_json, lambda: "\n".join(lines))


@click.command("history", epilog=EXIT_CODES_HELP)
@admin_command
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@_json_option
def job_history(admin: Admin, job_id: int, as_json: bool) -> None:
    """Every event of job ID: when, what, from, to, who, why."""
    found = admin.call("GetJobHistory", admin_pb2.GetJobHistoryRequest(id=job_id))
    _echo(found, as_json, lambda: output.events_table(found.events))


# --- flavors and pressure ---------------------------------------------------------


@click.group(epilog=EXIT_CODES_HELP)
def flavors() -> None:
    """The kinds of build machine an autoscaler can start, and what jobs they serve."""


def _flavor_table(found: list[types_pb2.Flavor]) -> str:
    if not found:
        return "no flavors"
    return output.table(
        ["NAME", "PLATFORM", "LABELS", "PRIORITY", "ENABLED", "MIN"],
        [
            [
                f.name,
                f.platform,
                ",".join(f.labels) or "-",
                str(f.priority),
                "yes" if f.enabled else "no",
                str(f.min_pressure),
            ]
            for f in found
        ],
    )


@flavors.command("add")
@admin_command
@click.argument("name")
@click.option("--platform", default=host_platform, show_default="this machine's")
@click.option("--label", "labels", multiple=True, metavar="LABEL", help="A label it has.")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher wins.")
@click.option("--min-pressure", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--disabled", is_flag=True, help="Add it disabled.")
@_json_option
def add_flavor(
    admin: Admin,
    name: str,
    platform: str,
    labels: tuple[str, ...],
    priority: int,
    min_pressure: int,
    disabled: bool,
    as_json: bool,
) -> None:
    """Add flavor NAME; waiting jobs it serves that had no flavor get it."""
    flavor = types_pb2.Flavor(
        name=name,
        platform=platform,
        labels=labels,
        priority=priority,
        enabled=not disabled,
        min_pressure=min_pressure,
    )
    added = admin.call("AddFlavor", admin_pb2.AddFlavorRequest(flavor=flavor)).flavor
    _echo(added, as_json, lambda: _flavor_table([added]))


@flavors.command("list")
@admin_command
@_json_option
def list_flavors(admin: Admin, as_json: bool) -> None:
    """List flavors by platform, highest priority first."""
    found = admin.call("ListFlavors", admin_pb2.ListFlavorsRequest())
    _echo(found, as_json, lambda: _flavor_table(list(found.flavors)))


def _flavor_switch(rpc: str, request_type: Any, verb: str) -> click.Command:
    @admin_command
    @click.argument("name")
    @_json_option
    def command(admin: Admin, name: str, as_json: bool) -> None:
        changed = admin.call(rpc, request_type(name=name)).flavor
        _echo(changed, as_json, lambda: _flavor_table([changed]))

    command.__doc__ = f"{verb} flavor NAME; its waiting jobs are assigned anew."
    return click.command(verb.lower())(command)


flavors.add_command(_flavor_switch("EnableFlavor", admin_pb2.EnableFlavorRequest, "Enable"))
flavors.add_command(_flavor_switch("DisableFlavor", admin_pb2.DisableFlavorRequest, "Disable"))


@flavors.command("delete")
@admin_command
@click.argument("name")
def delete_flavor(admin: Admin, name: str) -> None:
    """Delete flavor NAME; its waiting jobs go to another flavor, or wait."""
    admin.call("DeleteFlavor", admin_pb2.DeleteFlavorRequest(name=name))
    click.echo(f"flavor {name} deleted")


def _pressure_table(found: list[types_pb2.Pressure]) -> str:
    if not found:
        return "no flavors"
    return output.table(
        ["FLAVOR", "PLATFORM", "PRESSURE", "UNFINISHED", "ENABLED"],
        [
            [p.flavor, p.platform, str(p.value), str(p.unfinished), "yes" if p.enabled else "no"]
            for p in found
        ],
    )


@click.command(epilog=EXIT_CODES_HELP)
@admin_command
@click.option("--watch", is_flag=True, help="Print again each time a value changes (Ctrl-C ends).")
@_json_option
def pressure(admin: Admin, watch: bool, as_json: bool) -> None:
    """Unfinished jobs per flavor (never below its minimum): what an autoscaler reads."""
    if not watch:
        found = admin.call("GetPressures", admin_pb2.GetPressuresRequest())
        _echo(found, as_json, lambda: _pressure_table(list(found.pressures)))
        return
    for update in admin.watch_pressures():
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        if as_json:
            click.echo(output.to_json(update).replace("\n", " "))
        else:
            click.echo(f"# {stamp}\n{_pressure_table(list(update.pressures))}")


# --- schedules --------------------------------------------------------------------


@click.group(epilog=EXIT_CODES_HELP)
def schedules() -> None:
    """Recurring jobs: one pending run at a time, stretched after failures."""


def _schedule_table(found: list[types_pb2.Schedule]) -> str:
    if not found:
        return "no schedules"
    state = types_pb2.ScheduleState.DESCRIPTOR
    return output.table(
        ["NAME", "STATE", "EVERY", "FAILURES", "NEXT DUE", "PENDING JOB", "COMMAND"],
        [
            [
                s.name,
                output.enum_label(state, s.state),
                output.span(s.interval.ToTimedelta()),
                f"{s.consecutive_failures}/{s.max_failures}",
                output.timestamp(s.next_due_at),
                str(s.pending_job_id or "-"),
                output.command_line(s.job.command, 40),
            ]
            for s in found
        ],
    )


@schedules.command("create")
@admin_command
@click.argument("name")
@click.option("--every", "every", type=click.FloatRange(min=1), required=True, metavar="SECONDS")
@click.option("--max-failures", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--platform", default=host_platform, show_default="this machine's")
@click.option("--label", "labels", multiple=True, metavar="LABEL")
@click.option("--subject", default="", help="What each run works on (back-offs).")
@_json_option
@click.argument("command", nargs=-1, required=True)
def create_schedule(
    admin: Admin,
    name: str,
    every: float,
    max_failures: int,
    platform: str,
    labels: tuple[str, ...],
    subject: str,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND every SECONDS as schedule NAME (put `--` before COMMAND)."""
    request = admin_pb2.CreateScheduleRequest(
        name=name,
        job=types_pb2.JobSpec(platform=platform, labels=labels, command=command, subject=subject),
        interval=seconds(every),
        max_failures=max_failures,
    )
    created = admin.call("CreateSchedule", request).schedule
    _echo(created, as_json, lambda: _schedule_table([created]))


@schedules.command("list")
@admin_command
@_json_option
def list_schedules(admin: Admin, as_json: bool) -> None:
    """List schedules by name."""
    found = admin.call("ListSchedules", admin_pb2.ListSchedulesRequest())
    _echo(found, as_json, lambda: _schedule_table(list(found.schedules)))


def _schedule_action(rpc: str, request_type: Any, name: str, doc: str) -> click.Command:
    @admin_command
    @click.argument("name")
    @_json_option
    def command(admin: Admin, name: str, as_json: bool) -> None:
        changed = admin.call(rpc, request_type(name=name)).schedule
        _echo(changed, as_json, lambda: _schedule_table([changed]))

    command.__doc__ = doc
    return click.command(name)(command)


for _rpc, _request, _name, _doc in (
    ("PauseSchedule", admin_pb2.PauseScheduleRequest, "pause", "No new runs of NAME."),
    ("ResumeSchedule", admin_pb2.ResumeScheduleRequest, "resume", "Run NAME again."),
    ("RunScheduleNow", admin_pb2.RunScheduleNowRequest, "run-now", "Make NAME's run due now."),
):
    schedules.add_command(_schedule_action(_rpc, _request, _name, _doc))


# --- back-offs --------------------------------------------------------------------


@click.group(epilog=EXIT_CODES_HELP)
def backoffs() -> None:
    """(subject, process) back-offs that failing jobs wrote."""


@backoffs.command("list")
@admin_command
@_json_option
def list_backoffs(admin: Admin, as_json: bool) -> None:
    """List the back-offs in force."""
    found = admin.call("ListBackoffs", admin_pb2.ListBackoffsRequest())

    def human() -> str:
        if not found.backoffs:
            return "no back-offs"
        return output.table(
            ["SUBJECT", "PROCESS", "UNTIL", "JOB", "CAUSE"],
            [
                [b.subject, b.process or "-", output.timestamp(b.until), str(b.job_id), b.cause]
                for b in found.backoffs
            ],
        )

    _echo(found, as_json, human)


@backoffs.command("clear")
@admin_command
@click.argument("subject")
@click.option("--process", default="", help="The process of the pair [default: none].")
def clear_backoff(admin: Admin, subject: str, process: str) -> None:
    """End the back-off on SUBJECT now; its jobs may run."""
    admin.call("ClearBackoff", admin_pb2.ClearBackoffRequest(subject=subject, process=process))
    click.echo(f"back-off on {subject}/{process or '-'} cleared")
