"""`dispatcher jobs watch|retry|run-now|delete`, `jobs list --flavor`, `submit-batch`,
`server info` and `runners evict` against a real `dispatcher serve` process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.api.test_cli import (  # noqa: F401 (fixtures)
    CLI,
    START_SECONDS,
    Invoke,
    _read_line,
    cli,
    queue,
    server_address,
)
from tests.support.eventually import eventually_sync
from tests.support.processes import dispatcher_server, run_cli, runner_process

NOWHERE = "test/nowhere"


def _job(cli: Invoke, *args: str) -> dict[str, Any]:  # noqa: F811
    result = cli("submit", "--json", "--platform", NOWHERE, *args, "--", "true")
    assert result.exit_code == 0, result.output
    job: dict[str, Any] = json.loads(result.stdout)
    return job


def _watch(server_address: str, *args: str) -> subprocess.Popen[str]:  # noqa: F811
    return subprocess.Popen(
        [*CLI, "jobs", "watch", "--server", server_address, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        # A test run started in the background of a shell ignores SIGINT, and a child
        # inherits that: the Ctrl-C below would never reach it.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return _read_line(process.stdout, time.monotonic() + START_SECONDS)


def _interrupt(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        # Say where it was stuck: its stack (faulthandler, on SIGABRT) and its stderr.
        status = Path(f"/proc/{process.pid}/status").read_text()
        signals = [line for line in status.splitlines() if line.startswith("Sig")]
        process.send_signal(signal.SIGABRT)
        _, stderr = process.communicate(timeout=10)
        raise AssertionError(
            f"jobs watch did not end on Ctrl-C ({signals}); its stderr:\n{stderr}"
        ) from None
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()
    return code


def test_jobs_watch_prints_changes_and_resumes_from_a_cursor(
    cli: Invoke,  # noqa: F811
    server_address: str,  # noqa: F811
    queue: str,  # noqa: F811
) -> None:
    watching = _watch(server_address, "--json", "--queue", queue)
    try:
        start = json.loads(_line(watching))
        assert set(start) == {"cursor"}
        job = _job(cli, "--queue", queue)
        cancelled = cli("jobs", "cancel", str(job["id"]), "--reason", "no longer needed")
        assert cancelled.exit_code == 0
        submitted, ended = json.loads(_line(watching)), json.loads(_line(watching))
        assert (submitted["event"]["kind"], submitted["job"]["id"]) == ("submitted", job["id"])
        assert ended["event"]["kind"] == "cancelled"
        assert ended["job"]["state"] == "JOB_STATE_CANCELLED"
        assert int(ended["cursor"]) > int(submitted["cursor"]) > int(start["cursor"])
    finally:
        assert _interrupt(watching) == 0  # Ctrl-C ends it quietly

    resumed = _watch(server_address, "--queue", queue, "--from", str(submitted["cursor"]))
    try:
        line = _line(resumed)  # only the change after the cursor: the cancel
        assert re.fullmatch(
            rf"{ended['cursor']}  \S+ \S+  job {job['id']} cancelled QUEUED→CANCELLED "
            r"test-admin-\w+: no longer needed\n",
            line,
        ), line
    finally:
        _interrupt(resumed)


def test_jobs_watch_refuses_a_cursor_from_elsewhere(cli: Invoke) -> None:  # noqa: F811
    result = cli("jobs", "watch", "--from", str(10**12))
    assert result.exit_code == 1
    assert result.stderr.startswith("error: INVALID_ARGUMENT: after_cursor 1000000000000 is ahead")


def test_jobs_retry(cli: Invoke, queue: str) -> None:  # noqa: F811
    job = _job(cli, "--queue", queue)
    refused = cli("jobs", "retry", str(job["id"]))
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"error: FAILED_PRECONDITION: job {job['id']} is QUEUED")
    cli("jobs", "cancel", str(job["id"]))
    retried = cli("jobs", "retry", str(job["id"]), "--reason", "flaky")
    assert retried.exit_code == 0, retried.output
    assert re.fullmatch(rf"job \d+ QUEUED \(retry of job {job['id']}\)\n", retried.stdout)
    again = json.loads(cli("jobs", "retry", str(job["id"]), "--json").stdout)
    assert again["retry_of"] == str(job["id"])  # int64 is a string in proto JSON
    assert again["job"]["spec"]["queue"] == queue


def test_jobs_run_now(cli: Invoke, queue: str) -> None:  # noqa: F811
    job = _job(cli, "--queue", queue, "--not-before", "2999-01-01T00:00:00Z")
    result = cli("jobs", "run-now", str(job["id"]))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"job {job['id']} NOTICED")
    assert result.stdout.endswith("(due now)\n")

    def queued() -> bool:
        shown = json.loads(cli("jobs", "show", str(job["id"]), "--json").stdout)
        return bool(shown["state"] == "JOB_STATE_QUEUED")

    eventually_sync(queued)
    refused = cli("jobs", "run-now", str(job["id"]))
    assert refused.exit_code == 1
    assert "only a NOTICED job waits for its due time" in refused.stderr


def test_jobs_delete(cli: Invoke, queue: str) -> None:  # noqa: F811
    job = _job(cli, "--queue", queue)
    deleted = cli("jobs", "delete", str(job["id"]), "--reason", "typo")
    assert deleted.stdout == f"job {job['id']} CANCELLED: typo\n"
    refused = cli("jobs", "delete", str(job["id"]))
    assert refused.exit_code == 1
    assert refused.stderr.startswith(f"error: FAILED_PRECONDITION: job {job['id']} is CANCELLED")
    missing = cli("jobs", "delete", "999999")
    assert missing.exit_code == 1
    assert missing.stderr == "error: NOT_FOUND: job 999999 does not exist\n"


def test_jobs_list_by_flavor(cli: Invoke, queue: str) -> None:  # noqa: F811
    platform = f"test/{uuid.uuid4().hex[:6]}"
    flavor = f"f-{uuid.uuid4().hex[:6]}"
    assert cli("flavors", "add", flavor, "--platform", platform).exit_code == 0
    job = json.loads(
        cli("submit", "--json", "--platform", platform, "--queue", queue, "--", "true").stdout
    )
    listed = json.loads(cli("jobs", "list", "--json", "--flavor", flavor).stdout)
    assert [j["id"] for j in listed["jobs"]] == [job["id"]]
    assert cli("jobs", "list", "--flavor", f"{flavor}-none").stdout == "no jobs\n"


def test_submit_batch(cli: Invoke, queue: str, tmp_path: Path) -> None:  # noqa: F811
    lines = [
        json.dumps({"platform": NOWHERE, "command": ["echo", str(i)], "queue": queue})
        for i in range(5)
    ]
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    human = cli("submit-batch", str(jobs_file), "--chunk-size", "2")
    assert human.exit_code == 0, human.output
    assert human.stdout == (
        "submitted 5 job(s) in 3 batch(es): 5 new, 0 already submitted; QUEUED 5\n"
    )
    summary = json.loads(cli("submit-batch", str(jobs_file), "--json").stdout)
    assert (summary["submitted"], summary["batches"], summary["states"]) == (5, 1, {"QUEUED": 5})
    listed = json.loads(cli("jobs", "list", "--json", "--queue", queue).stdout)
    assert len(listed["jobs"]) == 10
    assert sorted(int(j["id"]) for j in listed["jobs"])[-5:] == sorted(summary["job_ids"])


def test_submit_batch_with_a_bad_line_sends_nothing(
    cli: Invoke,  # noqa: F811
    queue: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    jobs_file = tmp_path / "jobs.jsonl"
    good = json.dumps({"platform": NOWHERE, "command": ["true"], "queue": queue})
    jobs_file.write_text(f'{good}\n{{"platform": 3, "colour": "red"}}\n')
    result = cli("submit-batch", str(jobs_file))
    assert result.exit_code == 2
    assert f"{jobs_file} line 2: not a JobSpec in proto JSON" in result.stderr
    assert cli("jobs", "list", "--queue", queue).stdout == "no jobs\n"


def test_submit_batch_stops_at_a_refused_batch(
    cli: Invoke,  # noqa: F811
    queue: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    good = json.dumps({"platform": NOWHERE, "command": ["true"], "queue": queue})
    no_platform = json.dumps({"command": ["true"], "queue": queue})
    jobs_file = tmp_path / "jobs.jsonl"
    jobs_file.write_text(f"{good}\n{good}\n{good}\n{no_platform}\n")
    result = cli("submit-batch", str(jobs_file), "--chunk-size", "2")
    assert result.exit_code == 1
    assert "the batch of lines 3-4 was refused" in result.stderr
    assert "2 job(s) submitted before it (lines 1-2)" in result.stderr
    assert "error: INVALID_ARGUMENT: job 1: " in result.stderr
    listed = json.loads(cli("jobs", "list", "--json", "--queue", queue).stdout)
    assert len(listed["jobs"]) == 2


def test_server_info_shows_the_replicas(cli: Invoke) -> None:  # noqa: F811
    info = json.loads(cli("server", "info", "--json").stdout)
    assert info["live_replicas"] == 1
    assert [r["id"] for r in info["replicas"]] == [info["replica_id"]]
    human = cli("server", "info").stdout
    assert re.search(rf"^live replicas\s+1 \({info['replica_id']}\)$", human, re.MULTILINE)


def test_runners_evict(tmp_path: Path) -> None:
    with (
        dispatcher_server(f"sqlite:///{tmp_path / 'd.db'}", tmp_path) as server,
        runner_process(server.address, "builder-1", tmp_path, "--platform", "cli/test"),
    ):

        def online() -> bool:
            listed = json.loads(run_cli(server.address, "runners", "list", "--json").stdout)
            return [r.get("state") for r in listed["runners"]] == ["RUNNER_STATE_ONLINE"]

        eventually_sync(online, timeout=20)
        evicted = run_cli(server.address, "runners", "evict", "builder-1", "--reason", "wedged")
        assert evicted.returncode == 0, evicted.stderr
        assert evicted.stdout == (
            "runner builder-1 OFFLINE: 1 session(s) closed, 0 job(s) moved on\n"
        )
        unknown = run_cli(server.address, "runners", "evict", "nobody", "--json")
        assert unknown.returncode == 1
        assert unknown.stderr == (
            "error: NOT_FOUND: runner 'nobody' is not known to this dispatcher\n"
        )
