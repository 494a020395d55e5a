"""`dispatcher runners drain|undrain|list` against a real server and a real runner."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.eventually import eventually_sync
from tests.support.processes import dispatcher_server, run_cli, runner_process


def test_drain_and_undrain_a_connected_runner(tmp_path: Path) -> None:
    with (
        dispatcher_server(f"sqlite:///{tmp_path / 'd.db'}", tmp_path) as server,
        runner_process(server.address, "builder-1", tmp_path, "--platform", "cli/test"),
    ):

        def online() -> bool:
            listed = json.loads(run_cli(server.address, "runners", "list", "--json").stdout)
            return [r.get("state") for r in listed["runners"]] == ["RUNNER_STATE_ONLINE"]

        eventually_sync(online, timeout=20)
        drained = run_cli(server.address, "runners", "drain", "builder-1", "--reason", "patching")
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout == "runner builder-1 DRAINING\n"
        table = run_cli(server.address, "runners", "list").stdout
        assert "builder-1" in table
        assert "DRAINING" in table
        undrained = run_cli(server.address, "runners", "undrain", "builder-1", "--json")
        assert json.loads(undrained.stdout)["state"] == "RUNNER_STATE_ONLINE"

        unknown = run_cli(server.address, "runners", "drain", "nobody")
        assert unknown.returncode == 1
        assert (
            unknown.stderr == "error: NOT_FOUND: runner 'nobody' is not known to this dispatcher\n"
        )
