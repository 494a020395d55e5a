"""The ``external`` adapter: jobs that another system runs and the dispatcher only tracks
(SPEC §7, the runner-planner case: they count in pressure like any unfinished job).

Nothing is started: ``run`` only binds the job to an execution. The other system's
webhook receiver reports through Distributor.Notify that the job started or completed,
with raw JSON that is merged into the job's raw data (the shape of ``wire.py``, e.g.
``{"state": "started", "raw": {"runner": "gha-17"}}``). It cannot be handed a token, so
it derives the execution's notification token from the shared ``secret``
(:func:`notify_token_for`); the execution id is the job's ``current_execution_id``. A
cancel is recorded by the dispatcher only: stopping the work is the other system's job.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import timedelta

from dispatcher.distributors.contract import (
    RUNNING,
    BackendStatus,
    Config,
    ExecutionTicket,
    Host,
    Ignore,
    InvalidConfig,
)
from dispatcher.distributors.wire import number, only_keys, parse_status, text
from dispatcher.domain.model import Job

KIND = "external"
MIN_SECRET = 16


def notify_token_for(secret: str, execution_id: int) -> str:
    """The notification token of ``execution_id`` for an instance with ``secret``."""
    message = f"dispatcher-execution:{execution_id}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class ExternalDistributor:
    @staticmethod
    def validate(config: Config) -> None:
        only_keys(config, {"secret", "poll_timeout_seconds"})
        if len(text(config, "secret", required=True)) < MIN_SECRET:
            raise InvalidConfig(f"secret must be at least {MIN_SECRET} characters")
        number(config, "poll_timeout_seconds", 86400.0)

    def __init__(self, name: str, config: Config, host: Host) -> None:
        self._name = name
        self._secret = text(config, "secret", required=True)
        self._poll_timeout = timedelta(seconds=number(config, "poll_timeout_seconds", 86400.0))

    async def run(self, job: Job, execution: ExecutionTicket) -> tuple[str, timedelta]:
        return f"{self._name}-{execution.id}", self._poll_timeout

    async def cancel(self, token: str) -> None:
        return None

    async def get_status(self, token: str) -> BackendStatus:
        return RUNNING  # only the other system knows; it tells us through Notify

    def info_url(self, token: str) -> str:
        return ""

    def handle_notification(
        self, execution: ExecutionTicket, data: bytes, attrs: Mapping[str, str]
    ) -> BackendStatus | Ignore:
        return parse_status(data)

    def notify_token(self, execution_id: int) -> str | None:
        return notify_token_for(self._secret, execution_id)

    async def probe(self) -> None:
        return None

    async def close(self) -> None:
        return None
