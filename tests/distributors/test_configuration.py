"""Every configured distributor instance is checked before the dispatcher starts (SPEC §7):
an unknown kind, a duplicate name or a config the adapter refuses stops `dispatcher serve`
and fails `dispatcher config check`, with a message that names the instance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.distributors.setup import installed_kinds

BAD = {
    "unknown kind": (
        '[distributors.farm]\nkind = "kubernetes"\n',
        "distributors.farm: unknown distributor kind 'kubernetes' (installed: ",
    ),
    "the runner pool's name": (
        '[distributors.runners]\nkind = "subprocess"\n',
        "distributors.runners: duplicate distributor name (same as the runner pool's name)",
    ),
    "a name used twice": (
        '[distributors.local]\nkind = "subprocess"\n[distributors.LOCAL]\nkind = "subprocess"\n',
        "distributors.LOCAL: duplicate distributor name (same as distributors.local)",
    ),
    "an invalid config": (
        '[distributors.farm]\nkind = "http"\nurl = "ftp://x"\n',
        "distributors.farm: invalid config for kind 'http': url must be an http:// or https:// URL",
    ),
    "an unknown adapter key": (
        '[distributors.local]\nkind = "subprocess"\ncolour = "blue"\n',
        "invalid config for kind 'subprocess': unknown key(s) colour",
    ),
    "a missing key": (
        '[distributors.actions]\nkind = "external"\n',
        "invalid config for kind 'external': secret is required",
    ),
}


def test_the_built_in_kinds_and_the_example_plugin_are_installed() -> None:
    assert {"subprocess", "http", "external", "echo"} <= set(installed_kinds())


@pytest.mark.parametrize("case", BAD, ids=str)
def test_config_check_refuses_a_bad_distributor(tmp_path: Path, case: str) -> None:
    text, message = BAD[case]
    path = tmp_path / "dispatcher.toml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 1
    assert message in result.output


@pytest.mark.parametrize("case", ["unknown kind", "an invalid config"])
def test_serve_refuses_to_start(tmp_path: Path, case: str) -> None:
    text, message = BAD[case]
    path = tmp_path / "dispatcher.toml"
    path.write_text(f'database_url = "sqlite:///{tmp_path}/d.db"\nhttp_listen = ""\n{text}')
    done = subprocess.run(
        [str(Path(sys.executable).with_name("dispatcher")), "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "d.db").exists()  # nothing started, nothing written


def test_a_good_distributor_config_checks(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.toml"
    path.write_text('[distributors.local]\nkind = "subprocess"\nparallelism = 2\n')
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
