"""The Distributor service's use cases (SPEC §7): notifications from backends, the list
of instances with their health, and checking a config. The API layer translates."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dispatcher.distributors.contract import IGNORE, ExecutionTicket, PermanentError
from dispatcher.distributors.dispatch import to_report
from dispatcher.distributors.registry import Registry, secrets_removed
from dispatcher.domain.errors import (
    InvalidInput,
    NotFound,
    PermissionDenied,
    StaleExecution,
    Unavailable,
)
from dispatcher.domain.states import JobState
from dispatcher.domain.validation import RUNNER_POOL
from dispatcher.lifecycle.distributors import Distributions, Notification

log = logging.getLogger(__name__)

MAX_ATTRS = 64
MAX_ATTR_BYTES = 4096


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    up: bool = True
    down_since: datetime | None = None
    cause: str = ""
    parallelism: int = 0


class DistributorService:
    def __init__(
        self,
        registry: Registry,
        distributions: Distributions,
        wake: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._registry = registry
        self._distributions = distributions
        # Tells an instance's loop that a slot may be free (an execution ended).
        self._wake = wake

    async def notify(
        self, execution_id: int, token: str, data: bytes, attrs: Mapping[str, str]
    ) -> bool:
        """Apply a backend's notification; False when the adapter found no news in it."""
        if execution_id <= 0:
            raise InvalidInput("execution_id is required: the id of the execution to report on")
        if not token:
            raise InvalidInput("token is required: the execution's notification token")
        if len(attrs) > MAX_ATTRS or any(
            len(k) + len(v) > MAX_ATTR_BYTES for k, v in attrs.items()
        ):
            raise InvalidInput(
                f"attrs: at most {MAX_ATTRS} entries of at most {MAX_ATTR_BYTES} bytes each"
            )
        try:
            execution = await self._distributions.verify(execution_id, token)
        except Notification as refused:
            if refused.kind == "NOT_FOUND":
                raise NotFound(str(refused)) from None
            if refused.kind == "FORGED":
                raise PermissionDenied(str(refused)) from None
            raise StaleExecution(str(refused)) from None
        instance = self._registry.get(execution.distributor)
        if instance is None:
            raise Unavailable(
                f"distributor {execution.distributor!r} is not configured on this dispatcher "
                "replica; try another, or restore its configuration"
            )
        ticket = ExecutionTicket(
            execution.id,
            execution.job_id,
            execution.number,
            execution.distributor,
            execution.config,
        )
        try:
            status = instance.adapter.handle_notification(ticket, data, attrs)
        except PermanentError as exc:
            raise InvalidInput(
                f"distributor {instance.name} ({instance.kind}) cannot read the notification: {exc}"
            ) from None
        if status == IGNORE:
            return False
        verdict = await self._distributions.report(
            execution.id,
            to_report(status),
            poll_interval=instance.timing.poll_interval,
            what="notification",
        )
        if not verdict.applied:
            raise StaleExecution(verdict.reason)
        if verdict.new_state is not JobState.BUILDING:
            self._wake(instance.name)
        return True

    async def list(self) -> list[InstanceInfo]:
        health = await self._distributions.health()
        listed = [InstanceInfo(RUNNER_POOL, RUNNER_POOL)]
        for name, instance in sorted(self._registry.instances.items()):
            h = health.get(name)
            listed.append(
                InstanceInfo(
                    name,
                    instance.kind,
                    secrets_removed(instance.config),
                    up=h.up if h else True,
                    down_since=h.down_since if h else None,
                    cause=h.cause if h else "",
                    parallelism=instance.timing.parallelism,
                )
            )
        return listed

    def validate_config(self, kind: str, config: Mapping[str, Any]) -> None:
        """ConfigurationError (INVALID_ARGUMENT) with the adapter's message, or nothing."""
        if not kind:
            raise InvalidInput("kind is required: the adapter, e.g. 'subprocess' or 'http'")
        self._registry.validate(kind, config)
