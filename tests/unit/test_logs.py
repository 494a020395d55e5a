"""The two log formats carry the same context fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from dispatcher import logs


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_context(restore_logging: None) -> None:
    out = io.StringIO()
    handler = logs.configure("auto", logging.INFO, out)  # not a terminal: JSON
    handler.addFilter(logs.ContextFilter(replica="r-1"))
    log = logging.getLogger("dispatcher.test")
    log.info("job %d done", 7, extra={"job_id": 7, "execution_id": 9, "runner": "m1"})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it broke")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "job 7 done"
    assert (first["job_id"], first["execution_id"], first["runner"]) == (7, 9, "m1")
    assert first["replica"] == "r-1"
    assert first["level"] == "INFO"
    assert first["logger"] == "dispatcher.test"
    assert first["time"].endswith("+00:00")
    assert "job_id" not in second
    assert "ValueError: boom" in second["exception"]


@pytest.mark.parametrize(
    "created", [1_795_000_000.0, 1_795_000_000.0429, 1_795_000_000.999, 1_795_000_001.5]
)
def test_json_time_is_the_record_time_in_utc_to_the_millisecond(created: float) -> None:
    formatter = logs.JsonFormatter()
    record = logging.LogRecord("dispatcher.test", logging.INFO, "", 0, "m", None, None)
    record.created = created
    record.msecs = int((created - int(created)) * 1000) + 0.0
    shown = json.loads(formatter.format(record))["time"]
    expected = datetime.fromtimestamp(int(created), UTC) + timedelta(milliseconds=record.msecs)
    assert shown == expected.isoformat(timespec="milliseconds")
    # The same second again, and the next one: each line shows its own time.
    later = logging.LogRecord("dispatcher.test", logging.INFO, "", 0, "m", None, None)
    later.created, later.msecs = int(created) + 1.25, 250.0
    assert json.loads(formatter.format(later))["time"] == (
        datetime.fromtimestamp(int(created) + 1, UTC) + timedelta(milliseconds=250)
    ).isoformat(timespec="milliseconds")


def test_text_lines_name_the_context(restore_logging: None) -> None:
    out = io.StringIO()
    logs.configure("text", logging.INFO, out)
    logging.getLogger("dispatcher.test").warning("lost", extra={"runner": "m1", "job_id": 3})
    line = out.getvalue().strip()
    assert " WARNING dispatcher.test: lost [job_id=3 runner=m1]" in line
