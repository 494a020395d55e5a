"""The reference configuration documents every setting with its default, and
`dispatcher config check` explains what is wrong with a file."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from dispatcher.cli import main
from dispatcher.settings import LimitSettings, RuleSettings, Settings

REFERENCE = Path(__file__).resolve().parents[2] / "dispatcher.example.toml"


def test_the_reference_config_loads_and_equals_the_defaults() -> None:
    assert Settings.load(REFERENCE) == Settings()


def test_the_reference_config_names_every_setting() -> None:
    text = REFERENCE.read_text()
    data = tomllib.loads(text)
    documented = set(data) | {"migrate_on_start"}  # commented out: its default is "unset"
    assert documented == set(Settings.model_fields)
    assert set(data["limits"]) == set(LimitSettings.model_fields)
    assert set(data["rules"]) == set(RuleSettings.model_fields)


def test_config_check_accepts_the_reference() -> None:
    result = CliRunner().invoke(main, ["config", "check", str(REFERENCE)])
    assert result.exit_code == 0
    assert result.output.endswith(": OK\n")


def test_config_check_explains_each_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'listen = 5\nheartbeat_timeout_seconds = -1\ncolour = "blue"\n[limits]\nmax_labels = 0\n'
    )
    result = CliRunner().invoke(main, ["config", "check", str(bad)])
    assert result.exit_code == 1
    assert "4 error(s)" in result.output
    for field in ("listen", "heartbeat_timeout_seconds", "colour", "limits.max_labels"):
        assert f"  {field}: " in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    result = CliRunner().invoke(main, ["config", "check", str(broken)])
    assert result.exit_code == 1
    assert "not valid TOML" in result.output
