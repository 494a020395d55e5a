"""The client half of the ``dispatcher`` command against a real dispatcher.

One ``dispatcher serve`` subprocess (port 0, a fresh SQLite file) serves the whole
module; each test works in its own queue so that listings see only its jobs.
"""

from __future__ import annotations

import json
import re
import selectors
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from click.testing import CliRunner, Result

from dispatcher.cli import main
from dispatcher.cli.client import Endpoint
from dispatcher_runner import host_platform
from tests.support.processes import bootstrap_tokens

READY = re.compile(r"dispatcher listening on port (\d+) \((\w+)\)")
START_SECONDS = 30.0
# The CLI run as a program (for tests that need it running while others act).
CLI = [sys.executable, "-c", "from dispatcher.cli import main; main()"]

Invoke = Callable[..., Result]


def _read_line(stream: IO[str], deadline: float) -> str:
    """The next line of ``stream``, or a failure once ``deadline`` (monotonic) passes."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not selector.select(remaining):
            pytest.fail("timed out waiting for a line of output")
    return stream.readline()


@pytest.fixture(scope="module")
def server_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("cli-server")
    log = workdir / "server.log"
    url = f"sqlite:///{workdir / 'dispatcher.db'}"
    command = [
        *CLI,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--database",
        url,
    ]
    # Every command of this module, in-process or not, sends the admin token.
    environment = pytest.MonkeyPatch()
    environment.setenv("DISPATCHER_TOKEN", bootstrap_tokens(url).admin)
    with log.open("w") as stderr:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + START_SECONDS
        line = _read_line(proc.stdout, deadline)
        ready = READY.search(line)
        if ready is None:
            proc.kill()
            pytest.fail(f"the server did not start: {line!r}\n{log.read_text()}")
        yield f"127.0.0.1:{ready.group(1)}"
    finally:
        environment.undo()
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.fixture
def cli(server_address: str) -> Invoke:
    """Run ``dispatcher ARGS...`` in-process against the test server."""

    def invoke(*args: str) -> Result:
        result = CliRunner().invoke(main, list(args), env={"DISPATCHER_SERVER": server_address})
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _submit(cli: Invoke, queue: str, *args: str) -> dict[str, Any]:
    job: dict[str, Any] = _json(cli("submit", "--json", "--queue", queue, *args, "--", "true"))
    return job


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- submit ---------------------------------------------------------------------------------


def test_submit_prints_the_job_id_and_state(cli: Invoke, queue: str) -> None:
    result = cli("submit", "--queue", queue, "--", "make", "-j4", "check")

    assert result.exit_code == 0
    assert re.fullmatch(r"job \d+ QUEUED\n", result.stdout)


def test_submit_json_is_the_job_with_proto_field_names(cli: Invoke, queue: str) -> None:
    job = _submit(
        cli,
        queue,
        "--label",
        "big",
        "--label",
        "arm",
        "--priority",
        "5",
        "--on-lost",
        "Irrecoverable",
    )

    assert job["state"] == "JOB_STATE_QUEUED"
    assert int(job["id"]) > 0
    assert job["attempt"] == 0
    assert "created_at" in job
    spec = job["spec"]
    assert spec["platform"] == host_platform()
    assert spec["queue"] == queue
    assert sorted(spec["labels"]) == ["arm", "big"]
    assert spec["priority"] == 5
    assert spec["command"] == ["true"]
    assert spec["on_lost"] == "ON_LOST_POLICY_IRRECOVERABLE"


def test_everything_after_the_double_dash_is_the_command(cli: Invoke, queue: str) -> None:
    result = cli("submit", "--json", "--queue", queue, "--", "ls", "--json", "-l")

    assert _json(result)["spec"]["command"] == ["ls", "--json", "-l"]


def test_submit_with_a_used_idempotency_key_returns_the_first_job(cli: Invoke, queue: str) -> None:
    first = _submit(cli, queue, "--idempotency-key", queue)
    again = cli("submit", "--queue", queue, "--idempotency-key", queue, "--", "true")

    assert again.exit_code == 0
    assert again.stdout.startswith(f"job {first['id']} QUEUED")
    assert "already submitted" in again.stdout


def test_submit_not_before_a_future_time_is_noticed(cli: Invoke, queue: str) -> None:
    job = _submit(cli, queue, "--not-before", "2999-01-01T00:00:00Z")

    assert job["state"] == "JOB_STATE_NOTICED"
    assert job["spec"]["not_before"] == "2999-01-01T00:00:00Z"


def test_submit_wait_gives_up_after_timeout_with_exit_4(cli: Invoke, queue: str) -> None:
    result = cli("submit", "--queue", queue, "--wait", "--timeout", "0", "--", "true")

    assert result.exit_code == 4
    assert re.fullmatch(r"job \d+ QUEUED\n", result.stdout)
    assert re.fullmatch(r"error: gave up after 0s: job \d+ is still QUEUED\n", result.stderr)


def test_submit_wait_ends_with_the_job_and_exit_4_unless_it_succeeded(
    cli: Invoke, server_address: str, queue: str
) -> None:
    waiting = subprocess.Popen(
        [*CLI, "submit", "--server", server_address, "--queue", queue, "--wait", "--", "true"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiting.stdout is not None
    try:
        first = _read_line(waiting.stdout, time.monotonic() + START_SECONDS)
        submitted = re.fullmatch(r"job (\d+) QUEUED\n", first)
        assert submitted, first
        assert cli("jobs", "cancel", submitted.group(1), "--reason", "enough").exit_code == 0

        out, err = waiting.communicate(timeout=START_SECONDS)
    finally:
        waiting.kill()
        waiting.communicate()

    assert waiting.returncode == 4, err
    assert out == f"job {submitted.group(1)} CANCELLED: enough\n"


# --- jobs -----------------------------------------------------------------------------------


def test_jobs_list_filters_by_status(cli: Invoke, queue: str) -> None:
    queued = _submit(cli, queue)
    cancelled = _submit(cli, queue)
    cli("jobs", "cancel", cancelled["id"])

    only_cancelled = _json(cli("jobs", "list", "--queue", queue, "--status", "cancelled", "--json"))
    statuses = ("--status", "QUEUED", "--status", "Cancelled")
    either = _json(cli("jobs", "list", "--queue", queue, *statuses, "--json"))
    neither = _json(cli("jobs", "list", "--queue", queue, "--status", "not_for_us", "--json"))

    assert [j["id"] for j in only_cancelled["jobs"]] == [cancelled["id"]]
    assert only_cancelled["jobs"][0]["state"] == "JOB_STATE_CANCELLED"
    assert [j["id"] for j in either["jobs"]] == [cancelled["id"], queued["id"]]
    assert neither == {"jobs": [], "next_page_token": ""}


def test_jobs_list_shows_a_table(cli: Invoke, queue: str) -> None:
    job = _submit(cli, queue, "--label", "big")

    result = cli("jobs", "list", "--queue", queue, "--label", "big")

    assert result.exit_code == 0
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "ID",
        "STATE",
        "QUEUE",
        "PLATFORM",
        "RUNNER",
        "ATTEMPT",
        "AGE",
        "COMMAND",
    ]
    assert row.split()[:4] == [job["id"], "QUEUED", queue, host_platform()]
    assert row.split()[-1] == "true"


def test_jobs_list_limit_and_all(cli: Invoke, queue: str) -> None:
    ids = [_submit(cli, queue)["id"] for _ in range(3)]

    limited = cli("jobs", "list", "--queue", queue, "--limit", "2")
    page = _json(cli("jobs", "list", "--queue", queue, "--limit", "2", "--json"))
    rest = _json(
        cli("jobs", "list", "--queue", queue, "--page-token", page["next_page_token"], "--json")
    )
    everything = _json(cli("jobs", "list", "--queue", queue, "--all", "--json"))

    assert len(limited.stdout.splitlines()) == 3  # header and two jobs
    assert "more jobs match" in limited.stderr
    assert [j["id"] for j in page["jobs"]] == ids[:0:-1]
    assert [j["id"] for j in rest["jobs"]] == ids[:1]
    assert [j["id"] for j in everything["jobs"]] == ids[::-1]
    assert everything["next_page_token"] == ""


def test_jobs_show(cli: Invoke, queue: str) -> None:
    job = _submit(cli, queue, "--label", "big")

    human = cli("jobs", "show", job["id"])
    shown = _json(cli("jobs", "show", job["id"], "--json"))

    assert human.exit_code == 0
    assert human.stdout.startswith(f"job {job['id']}\n")
    assert re.search(r"^\s+state\s+QUEUED$", human.stdout, re.MULTILINE)
    assert re.search(r"^\s+labels\s+big$", human.stdout, re.MULTILINE)
    assert "events:" in human.stdout
    assert re.search(r"submitted\s+-→QUEUED\s+test-admin-\w+", human.stdout)
    assert shown["id"] == job["id"]
    assert [e["kind"] for e in shown["events"]] == ["submitted"]
    assert shown["executions"] == []


def test_jobs_cancel_makes_it_cancelled(cli: Invoke, queue: str) -> None:
    job = _submit(cli, queue)

    result = cli("jobs", "cancel", job["id"], "--reason", "not needed")
    shown = _json(cli("jobs", "show", job["id"], "--json"))

    assert result.exit_code == 0
    assert result.stdout == f"job {job['id']} CANCELLED: not needed\n"
    assert shown["state"] == "JOB_STATE_CANCELLED"
    assert shown["events"][-1]["kind"] == "cancelled"


def test_jobs_cancel_json(cli: Invoke, queue: str) -> None:
    job = _submit(cli, queue)

    cancelled = _json(cli("jobs", "cancel", job["id"], "--json"))

    assert cancelled["state"] == "JOB_STATE_CANCELLED"


# --- errors and exit codes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("jobs", "show", "999999"), ("jobs", "cancel", "999999")],
    ids=["show", "cancel"],
)
def test_an_unknown_job_is_a_clean_error_with_exit_1(cli: Invoke, args: tuple[str, ...]) -> None:
    result = cli(*args)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "error: NOT_FOUND: job 999999 does not exist\n"


def test_an_invalid_request_is_exit_1_naming_the_field(cli: Invoke) -> None:
    result = cli("submit", "--platform", "", "--", "true")

    assert result.exit_code == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT: ")
    assert "platform" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ("server", "info"),
        ("jobs", "list"),
        ("jobs", "show", "1"),
        ("runners", "list"),
        ("submit", "--", "true"),
    ],
    ids=["server-info", "jobs-list", "jobs-show", "runners-list", "submit"],
)
def test_an_unreachable_server_is_exit_3(args: tuple[str, ...]) -> None:
    address = f"127.0.0.1:{_closed_port()}"

    result = CliRunner().invoke(main, list(args), env={"DISPATCHER_SERVER": address})

    assert result.exit_code == 3, result.output
    assert result.stderr.startswith(f"error: UNAVAILABLE: cannot reach {address}: ")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ("jobs", "list", "--status", "sleeping"),
        ("jobs", "list", "--all", "--limit", "5"),
        ("jobs", "show", "not-a-number"),
        ("submit", "--on-lost", "sometimes", "--", "true"),
        ("submit", "--not-before", "tomorrow", "--", "true"),
        ("submit", "--timeout", "5", "--", "true"),
        ("submit",),
    ],
    ids=["status", "all-and-limit", "job-id", "on-lost", "not-before", "timeout", "no-command"],
)
def test_a_bad_command_line_is_exit_2(cli: Invoke, args: tuple[str, ...]) -> None:
    result = cli(*args)

    assert result.exit_code == 2
    assert "Traceback" not in result.output


def test_a_bad_status_names_the_choices(cli: Invoke) -> None:
    result = cli("jobs", "list", "--status", "sleeping")

    assert "not-for-us" in result.stderr


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["--help"])

    assert re.search(r"3\s+cannot reach the dispatcher", result.stdout)
    assert re.search(r"4\s+submit --wait", result.stdout)


def test_the_token_is_sent_as_a_bearer_authorization() -> None:
    assert Endpoint("h:1", token="s3cret").metadata() == (("authorization", "Bearer s3cret"),)
    assert Endpoint("h:1").metadata() == ()


# --- runners and the server -----------------------------------------------------------------


def test_runners_list_with_none_connected(cli: Invoke) -> None:
    human = cli("runners", "list")

    assert human.exit_code == 0
    assert human.stdout == "no runners\n"
    assert _json(cli("runners", "list", "--json")) == {"runners": []}


def test_server_info(cli: Invoke) -> None:
    human = cli("server", "info")
    info = _json(cli("server", "info", "--json"))

    assert human.exit_code == 0
    assert re.search(r"^database\s+sqlite$", human.stdout, re.MULTILINE)
    assert info["database"] == "sqlite"
    assert info["version"]
    assert info["replica_id"]


def test_ca_file_makes_a_secure_channel_that_a_plain_server_refuses(
    server_address: str, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")

    result = CliRunner().invoke(
        main, ["server", "info", "--server", server_address, "--ca-file", str(ca)]
    )

    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: UNAVAILABLE: ")
