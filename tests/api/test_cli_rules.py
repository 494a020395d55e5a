"""The scheduling-rule commands against a real `dispatcher serve` process: flavors and
pressure, schedules, back-offs, explain and history, and submit's rule options."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.api.test_cli import Invoke, cli, server_address  # noqa: F401 (fixtures)


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def test_flavors_and_pressure(cli: Invoke) -> None:  # noqa: F811
    platform = f"test/{uuid.uuid4().hex[:6]}"
    flavor = _name("big")
    added = cli(
        "flavors", "add", flavor, "--platform", platform, "--label", "big", "--min-pressure", "1"
    )
    assert added.exit_code == 0, added.output
    assert flavor in added.stdout
    submitted = json.loads(
        cli("submit", "--json", "--platform", platform, "--label", "big", "--", "true").stdout
    )
    assert submitted["flavor"] == flavor
    refused = json.loads(
        cli("submit", "--json", "--platform", platform, "--label", "gpu", "--", "true").stdout
    )
    assert refused["state"] == "JOB_STATE_NOT_FOR_US"
    pressures = json.loads(cli("pressure", "--json").stdout)["pressures"]
    assert {
        "flavor": flavor,
        "platform": platform,
        "value": 1,
        "unfinished": 1,
        "enabled": True,
    } in pressures
    disabled = cli("flavors", "disable", flavor)
    assert "no" in disabled.stdout
    explained = cli("jobs", "explain", str(submitted["id"]))
    assert explained.exit_code == 0
    assert f"flavor-disabled: flavor disabled: {flavor}" in explained.stdout
    missing = cli("flavors", "delete", _name("none"))
    assert missing.exit_code == 1, missing.output  # refused by the server
    assert "NOT_FOUND: flavor" in missing.stderr


def test_schedules(cli: Invoke) -> None:  # noqa: F811
    name = _name("import")
    created = cli(
        "schedules", "create", name, "--every", "3600", "--platform", "test/none", "--", "true"
    )
    assert created.exit_code == 0, created.output
    assert name in created.stdout
    assert "ACTIVE" in created.stdout
    paused = cli("schedules", "pause", name)
    assert "PAUSED" in paused.stdout
    refused = cli("schedules", "run-now", name)
    assert refused.exit_code != 0
    assert "resume it before running it" in refused.stderr
    listed = json.loads(cli("schedules", "list", "--json").stdout)["schedules"]
    assert any(s["name"] == name and s["state"] == "SCHEDULE_STATE_PAUSED" for s in listed)


def test_submit_options_explain_and_history(cli: Invoke) -> None:  # noqa: F811
    key = _name("repo")
    job = json.loads(
        cli(
            "submit",
            "--json",
            "--platform",
            "test/none",
            "--dedupe-key",
            key,
            "--coalesce-key",
            key,
            "--subject",
            key,
            "--attempts",
            "3",
            "--max-wait",
            "60",
            "--",
            "true",
        ).stdout
    )
    assert job["spec"]["dedupe_key"] == key
    assert job["spec"]["retry"]["max_attempts"] == 3
    second = json.loads(
        cli("submit", "--json", "--platform", "test/none", "--dedupe-key", key, "--", "true").stdout
    )
    assert second["state"] == "JOB_STATE_NOTICED"
    explained = cli("jobs", "explain", str(second["id"]))
    assert f"dedupe: waiting behind job {job['id']} on dedupe key '{key}'" in explained.stdout
    history = cli("jobs", "history", str(job["id"]))
    assert "submitted" in history.stdout
    assert (
        cli("backoffs", "list").stdout.strip() in ("no back-offs",)
        or "SUBJECT" in cli("backoffs", "list").stdout
    )


def test_distributors_list_and_validate(cli: Invoke, tmp_path: Path) -> None:  # noqa: F811
    listed = cli("distributors", "list")
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.splitlines()[0].split()[:2] == ["NAME", "KIND"]
    assert any(line.split()[0] == "runners" for line in listed.stdout.splitlines()[1:])
    good = tmp_path / "good.json"
    good.write_text('{"kill_grace_seconds": 2}')
    valid = cli("distributors", "validate", "subprocess", str(good))
    assert valid.exit_code == 0, valid.output
    assert valid.stdout.strip() == "valid subprocess config"
    bad = tmp_path / "bad.json"
    bad.write_text('{"colour": "blue"}')
    refused = cli("distributors", "validate", "subprocess", str(bad))
    assert refused.exit_code == 1, refused.output
    assert "INVALID_ARGUMENT" in refused.stderr
    assert "colour" in refused.stderr
    unknown = cli("distributors", "validate", "teleporter", str(good))
    assert unknown.exit_code == 1
    assert "teleporter" in unknown.stderr
