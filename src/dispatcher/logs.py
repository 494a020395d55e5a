"""Log lines for machines and for people: one JSON object per line, or plain text.

Call sites say what a line is about with ``extra=``: ``job_id``, ``execution_id``,
``runner``, ``replica``; both formats carry those fields when present.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Literal

LogFormat = Literal["auto", "json", "text"]

# The fields a log line may be about, in the order they are shown.
CONTEXT_FIELDS = ("job_id", "execution_id", "runner", "replica")


# One encoder for every line: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, the context fields present, and the exception."""

    def __init__(self) -> None:
        super().__init__()
        # The second last formatted, and its text: a busy server logs every job's end,
        # many a second, and making a datetime for each line cost as much as the rest of
        # the line. The handler's lock keeps one line at a time here.
        self._second = -1
        self._second_text = ""

    def _time(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = datetime.fromtimestamp(second, UTC).isoformat()[:-6]
            self._second = second
        # As isoformat(timespec="milliseconds") writes it; msecs is the logging module's
        # own milliseconds of ``created``.
        return f"{self._second_text}.{int(record.msecs):03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(line)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        about = [
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        ]
        return f"{text} [{' '.join(about)}]" if about else text


class ContextFilter(logging.Filter):
    """Adds fixed context fields (e.g. this process's replica) to every record that does
    not carry its own."""

    def __init__(self, **fields: object) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in self.fields.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def choose(fmt: LogFormat, stream: IO[str]) -> Literal["json", "text"]:
    if fmt == "auto":
        return "text" if stream.isatty() else "json"
    return fmt


def configure(fmt: LogFormat, level: int, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log line to ``stream`` (stderr) in ``fmt``; replaces earlier handlers."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if choose(fmt, out) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Neither format shows the caller, thread or process: skip gathering them for each
    # record (the logging HOWTO's "Optimization"); a busy server logs every job's end.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp logs each request at INFO; the page polls every few seconds.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
