"""Distributor notifications (SPEC §7). The runner pool is the one distributor today; it
is listed so that clients see the same shape they will see when adapters arrive."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from dispatcher.domain.errors import Conflict, InvalidInput, NotFound
from dispatcher.domain.validation import RUNNER_POOL
from dispatcher.lifecycle.context import Context
from dispatcher.store import jobs as store


@dataclass(frozen=True)
class DistributorInstance:
    name: str
    kind: str


class Distributors:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def list(self) -> list[DistributorInstance]:
        return [DistributorInstance(RUNNER_POOL, RUNNER_POOL)]

    async def notify(
        self, execution_id: int, token: str, data: bytes, attrs: dict[str, str]
    ) -> bool:
        if execution_id <= 0:
            raise InvalidInput("execution_id is required")
        if not token:
            raise InvalidInput("token is required: the execution's notification token")

        def check(conn: Connection) -> bool:
            execution = store.get_execution(conn, execution_id)
            if execution is None:
                raise NotFound(f"execution {execution_id} does not exist")
            raise Conflict(
                f"execution {execution_id} runs on the runner pool (runner "
                f"{execution.runner or '?'}); runners report through Scheduler.Connect, "
                "not Notify"
            )

        return await self._ctx.db.run(check)
