"""The JSON shape in which backends report a task's status (the http, external and
example adapters share it), and checks of config values.

    {"state": "succeeded", "info": "exit status 0", "result": "...", "raw": {...}}

``state`` is one of running (also: started, queued, in_progress), succeeded (success),
failed (failure), irrecoverable, cancelled; ``raw`` is merged into the job's raw data.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dispatcher.distributors.contract import BackendStatus, InvalidConfig, PermanentError
from dispatcher.domain.states import Outcome

_STATES: dict[str, Outcome | None] = {
    "running": None,
    "started": None,
    "queued": None,
    "in_progress": None,
    "succeeded": Outcome.SUCCEEDED,
    "success": Outcome.SUCCEEDED,
    "failed": Outcome.FAILED,
    "failure": Outcome.FAILED,
    "irrecoverable": Outcome.IRRECOVERABLE,
    "cancelled": Outcome.CANCELLED,
}


def parse_status(data: bytes | str | Mapping[str, Any]) -> BackendStatus:
    """A status from its JSON form; PermanentError (naming the problem) when it is not one."""
    if isinstance(data, Mapping):
        body: Any = data
    else:
        try:
            body = json.loads(data or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise PermanentError(f"the status is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PermanentError("the status must be a JSON object")
    state = str(body.get("state", "")).lower()
    if state not in _STATES:
        raise PermanentError(
            f"state {body.get('state')!r} is not one of {', '.join(sorted(_STATES))}"
        )
    raw = body.get("raw")
    if raw is not None and not isinstance(raw, dict):
        raise PermanentError("raw must be a JSON object")
    result = body.get("result", "")
    return BackendStatus(
        outcome=_STATES[state],
        info=str(body.get("info", ""))[:4096],
        result=result.encode() if isinstance(result, str) else b"",
        raw=raw,
    )


def only_keys(config: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise InvalidConfig(
            f"unknown key(s) {', '.join(unknown)}; this adapter takes: "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )


def number(config: Mapping[str, Any], key: str, default: float, *, minimum: float = 0) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise InvalidConfig(f"{key} must be a number of at least {minimum:g}, not {value!r}")
    return float(value)


def text(config: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = config.get(key, "")
    if not isinstance(value, str):
        raise InvalidConfig(f"{key} must be a string, not {value!r}")
    if required and not value:
        raise InvalidConfig(f"{key} is required")
    return value
