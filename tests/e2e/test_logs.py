"""A real `dispatcher serve` writes one JSON object per log line when stderr is not a
terminal, and lines about a runner or a job carry its name or ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.eventually import eventually_sync
from tests.support.processes import dispatcher_server, run_cli, runner_process

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

PLATFORM = "e2e/logs"


def log_lines(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_serve_logs_json_lines_about_runners_and_jobs(database_url: str, tmp_path: Path) -> None:
    with dispatcher_server(database_url, tmp_path) as server:
        submitted = run_cli(
            server.address, "submit", "--platform", PLATFORM, "--json", "--", "true"
        )
        assert submitted.returncode == 0, submitted.stderr
        job_id = int(json.loads(submitted.stdout)["id"])
        with runner_process(server.address, "log-runner", tmp_path, "--platform", PLATFORM):

            def ended() -> dict[str, object] | None:
                for line in log_lines(server.log):
                    if line.get("job_id") == job_id and "ended" in str(line["message"]):
                        return line
                return None

            finished = eventually_sync(ended, timeout=30)
    assert finished["runner"] == "log-runner"
    assert isinstance(finished["execution_id"], int)
    assert finished["level"] == "INFO"
    assert finished["logger"] == "dispatcher.runners.hub"

    lines = log_lines(server.log)  # every line parses, up to the shutdown
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
    assert any(
        line.get("runner") == "log-runner" and "connected" in str(line["message"]) for line in lines
    )
    replicas = {line.get("replica") for line in lines if "replica" in line}
    assert len(replicas) == 1
    assert any(line["message"] == "dispatcher stopped" for line in lines)
