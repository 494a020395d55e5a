"""The ``http`` adapter: POSTs each job, with its execution's notification token, to a
URL; the backend answers through Distributor.Notify (SPEC §7).

Config: ``url`` (required) receives the POST; ``status_url`` (optional, with
``{token}``) is polled when the backend stays quiet, so a lost notification cannot leave
a job BUILDING (without it, only ``max_run`` ends such a job); ``cancel_url`` (optional,
``{token}``) receives a POST on cancel; ``info_url`` (optional, ``{token}``) is shown to
people; ``headers`` are sent with every request; ``timeout_seconds`` bounds each request;
``poll_timeout_seconds`` is the wait before the first poll.

The POST body is JSON: execution_id, job_id, attempt, distributor, notify_token, and the
job (platform, labels, command, payload as base64, queue, priority). A 2xx answer may be
JSON with ``id`` (the backend's handle, default: the execution id). Answers 408, 429 and
5xx, and unreachable backends, are transient; other 4xx are permanent (the job is
NOT_FOR_US with the backend's words). Status answers use the shape of ``wire.py``; a 404
there means the backend lost the task.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from dispatcher.distributors.contract import (
    RUNNING,
    BackendStatus,
    Config,
    ExecutionTicket,
    Host,
    Ignore,
    InvalidConfig,
    PermanentError,
    TransientError,
)
from dispatcher.distributors.wire import number, only_keys, parse_status, text
from dispatcher.domain.model import Job

KIND = "http"
_KEYS = {
    "url",
    "status_url",
    "cancel_url",
    "info_url",
    "headers",
    "timeout_seconds",
    "poll_timeout_seconds",
}


def _url(config: Config, key: str, *, required: bool = False, token: bool = False) -> str:
    value = text(config, key, required=required)
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidConfig(f"{key} must be an http:// or https:// URL, not {value!r}")
    if token and "{token}" not in value:
        raise InvalidConfig(f"{key} must contain {{token}}, where the task's token goes")
    return value


class HttpDistributor:
    @staticmethod
    def validate(config: Config) -> None:
        only_keys(config, _KEYS)
        _url(config, "url", required=True)
        for key in ("status_url", "cancel_url", "info_url"):
            _url(config, key, token=True)
        headers = config.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise InvalidConfig("headers must be a table of strings")
        number(config, "timeout_seconds", 10.0, minimum=0.1)
        number(config, "poll_timeout_seconds", 60.0)

    def __init__(self, name: str, config: Config, host: Host) -> None:
        self._name = name
        self._url = _url(config, "url", required=True)
        self._status_url = _url(config, "status_url")
        self._cancel_url = _url(config, "cancel_url")
        self._info_url = _url(config, "info_url")
        self._headers: dict[str, str] = dict(config.get("headers", {}))
        self._timeout = aiohttp.ClientTimeout(total=number(config, "timeout_seconds", 10.0))
        default_poll = 60.0 if self._status_url else 3600.0
        self._poll_timeout = timedelta(seconds=number(config, "poll_timeout_seconds", default_poll))
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._session

    async def _request(self, method: str, url: str, body: Any = None) -> tuple[int, bytes]:
        try:
            async with self._client().request(method, url, json=body) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"{method} {url}: {exc or type(exc).__name__}") from None

    @staticmethod
    def _check(method: str, url: str, status: int, body: bytes) -> None:
        if status < 300:
            return
        said = body[:300].decode(errors="replace").strip()
        message = f"{method} {url} answered {status}" + (f": {said}" if said else "")
        if status in (408, 429) or status >= 500:
            raise TransientError(message)
        raise PermanentError(message)

    async def run(self, job: Job, execution: ExecutionTicket) -> tuple[str, timedelta]:
        spec = job.spec
        body = {
            "execution_id": execution.id,
            "job_id": job.id,
            "attempt": execution.number,
            "distributor": execution.distributor,
            "notify_token": execution.notify_token,
            "job": {
                "platform": spec.platform,
                "labels": sorted(spec.labels),
                "command": list(spec.command),
                "payload": base64.b64encode(spec.payload).decode(),
                "queue": spec.queue,
                "priority": spec.priority,
            },
        }
        status, answer = await self._request("POST", self._url, body)
        self._check("POST", self._url, status, answer)
        token = str(execution.id)
        try:
            parsed = parse_json_object(answer)
        except ValueError:
            parsed = {}
        if parsed.get("id"):
            token = str(parsed["id"])
        return token, self._poll_timeout

    def _at(self, template: str, token: str) -> str:
        return template.replace("{token}", quote(token, safe=""))

    async def cancel(self, token: str) -> None:
        if not self._cancel_url:
            return
        url = self._at(self._cancel_url, token)
        status, answer = await self._request("POST", url)
        if status in (404, 409, 410):
            return  # gone or ended already: cancelling twice is not an error
        self._check("POST", url, status, answer)

    async def get_status(self, token: str) -> BackendStatus:
        if not self._status_url:
            return RUNNING  # no way to ask; the backend's Notify (or max_run) ends it
        url = self._at(self._status_url, token)
        status, answer = await self._request("GET", url)
        self._check("GET", url, status, answer)
        return parse_status(answer)

    def info_url(self, token: str) -> str:
        return self._at(self._info_url, token) if self._info_url else ""

    def handle_notification(
        self, execution: ExecutionTicket, data: bytes, attrs: Mapping[str, str]
    ) -> BackendStatus | Ignore:
        return parse_status(data)

    def notify_token(self, execution_id: int) -> str | None:
        return None

    async def probe(self) -> None:
        # Any answer below 500 means the backend is there to take jobs again.
        url = self._at(self._status_url, "probe") if self._status_url else self._url
        status, _ = await self._request("GET", url)
        if status >= 500:
            raise TransientError(f"GET {url} answered {status}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def parse_json_object(data: bytes) -> dict[str, Any]:
    value = json.loads(data or b"{}")
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
