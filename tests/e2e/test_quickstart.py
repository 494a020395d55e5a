"""The README's quick start, for real: `dispatcher serve`, a `dispatcher-runner`, jobs
submitted with grpcurl JSON and with the CLI; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.eventually import eventually_sync
from tests.support.processes import (
    ServerProcess,
    dispatcher_server,
    run_cli,
    runner_process,
    tool,
)

pytestmark = pytest.mark.e2e

PLATFORM = "e2e/test"


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with dispatcher_server(database_url, tmp_path) as started:
        yield started


def grpcurl(
    server: ServerProcess, *args: str, data: object | None = None, token: bool = True
) -> str:
    command = [tool("grpcurl"), "-plaintext"]
    if token:
        command += ["-H", f"authorization: Bearer {server.tokens.admin}"]
    if data is not None:
        command += ["-d", json.dumps(data)]
    result = subprocess.run(
        [*command, server.address, *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(server.address, *args)


def submit_shell(server: ServerProcess, script: str) -> subprocess.CompletedProcess[str]:
    return cli(server, "submit", "--platform", PLATFORM, "--json", "--", "sh", "-c", script)


def job_state(server: ServerProcess, job_id: str) -> dict[str, object]:
    found = json.loads(grpcurl(server, "dispatcher.v1.Admin/GetJob", data={"id": job_id}))
    return found["job"]  # type: ignore[no-any-return]


def test_grpcurl_sees_the_services_and_health(server: ServerProcess) -> None:
    # Reflection and health need no token.
    services = grpcurl(server, "list", token=False).split()
    for name in (
        "dispatcher.v1.Scheduler",
        "dispatcher.v1.Distributor",
        "dispatcher.v1.Admin",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ):
        assert name in services
    health = json.loads(grpcurl(server, "grpc.health.v1.Health/Check", token=False))
    assert health == {"status": "SERVING"}
    described = grpcurl(server, "describe", "dispatcher.v1.Admin.SubmitJob", token=False)
    assert "rpc SubmitJob ( .dispatcher.v1.SubmitJobRequest )" in described


def test_jobs_from_grpcurl_and_the_cli_run_on_a_real_runner(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "ran-by-grpcurl-job"
    by_grpcurl = json.loads(
        grpcurl(
            server,
            "dispatcher.v1.Admin/SubmitJob",
            data={"spec": {"platform": PLATFORM, "command": ["touch", str(marker)]}},
        )
    )["job"]
    assert by_grpcurl["state"] == "JOB_STATE_QUEUED"

    submitted = submit_shell(server, "echo built by the cli")
    assert submitted.returncode == 0, submitted.stderr
    by_cli = json.loads(submitted.stdout)
    failing = json.loads(submit_shell(server, "echo broken >&2; exit 3").stdout)

    with runner_process(
        server.address, "e2e-runner", tmp_path, "--platform", PLATFORM, "--capacity", "2"
    ):

        def finished() -> bool:
            states = [job_state(server, j["id"])["state"] for j in (by_grpcurl, by_cli, failing)]
            return all(s in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED") for s in states)

        eventually_sync(finished, timeout=30)

    first = job_state(server, by_grpcurl["id"])
    assert first["state"] == "JOB_STATE_SUCCEEDED"
    assert marker.exists()
    second = job_state(server, by_cli["id"])
    assert second["state"] == "JOB_STATE_SUCCEEDED"
    assert "built by the cli" in second["executions"][0]["logtail"]
    third = job_state(server, failing["id"])
    assert third["state"] == "JOB_STATE_FAILED"
    assert third["info"] == "exit status 3"
    assert "broken" in third["executions"][0]["logtail"]
    assert [e["kind"] for e in third["events"]] == ["submitted", "started", "failed"]

    shown = cli(server, "jobs", "show", str(by_cli["id"]))
    assert shown.returncode == 0
    assert "SUCCEEDED" in shown.stdout
    listed = cli(server, "jobs", "list", "--status", "failed", "--json")
    assert [j["id"] for j in json.loads(listed.stdout)["jobs"]] == [failing["id"]]


def test_malformed_json_requests_get_clear_errors(server: ServerProcess) -> None:
    result = subprocess.run(
        [
            tool("grpcurl"),
            "-plaintext",
            "-H",
            f"authorization: Bearer {server.tokens.admin}",
            "-d",
            json.dumps({"spec": {"command": ["true"]}}),
            server.address,
            "dispatcher.v1.Admin/SubmitJob",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "spec.platform is required" in result.stderr
    missing = cli(server, "jobs", "show", "999999")
    assert missing.returncode == 1
    assert "job 999999 does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
