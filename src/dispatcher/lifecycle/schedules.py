"""Schedules: recurring jobs, the code-import pattern (SPEC §3). A schedule always has
exactly one pending job while it is active (a unique index holds the rule); when that job
ends, the schedule counts it (transitions._settle_schedule) and the tick makes the next
one, due at last start + interval, stretched after failures."""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from dispatcher.domain.errors import Conflict, InvalidInput, NotFound
from dispatcher.domain.model import Schedule, ScheduleSpec, ScheduleState
from dispatcher.domain.states import CANCEL_WAITING
from dispatcher.domain.validation import check_schedule
from dispatcher.lifecycle.admission import Admission
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.transitions import apply
from dispatcher.store import jobs as job_store
from dispatcher.store import schedules as store

log = logging.getLogger(__name__)


class Schedules:
    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self._admission = Admission(ctx.rules, ctx.rng, ctx.known_flavors)

    async def create(self, spec: ScheduleSpec, *, actor: str) -> Schedule:
        check_schedule(spec, self._ctx.limits)

        def work(conn: Connection) -> Schedule:
            now = self._ctx.clock.now()
            if store.get_schedule(conn, spec.name) is not None:
                raise Conflict(f"schedule {spec.name!r} already exists")
            schedule_id = store.insert_schedule(conn, spec, now)
            return self._make_pending(conn, schedule_id, actor)

        try:
            schedule = await self._ctx.db.run(work)
        except IntegrityError:
            raise Conflict(f"schedule {spec.name!r} already exists") from None
        self._ctx.wake()
        return schedule

    async def all(self) -> list[Schedule]:
        return await self._ctx.db.run(store.list_schedules)

    async def pause(self, name: str, *, actor: str) -> Schedule:
        """No new runs; a pending run that has not started is cancelled."""

        def work(conn: Connection) -> Schedule:
            schedule_id, schedule = self._find(conn, name)
            store.update_schedule(conn, schedule_id, state=ScheduleState.PAUSED)
            if schedule.pending_job_id is not None:
                job = job_store.get_job(conn, schedule.pending_job_id, for_update=True)
                if job is not None and job.state in CANCEL_WAITING.sources:
                    apply(
                        conn,
                        job,
                        CANCEL_WAITING,
                        self._ctx.clock.now(),
                        actor=actor,
                        cause=f"schedule {name!r} paused",
                    )
            return self._read(conn, schedule_id)

        return await self._ctx.db.run(work)

    async def resume(self, name: str, *, actor: str) -> Schedule:
        """Active again (a suspended schedule starts counting failures afresh)."""

        def work(conn: Connection) -> Schedule:
            schedule_id, _ = self._find(conn, name)
            store.update_schedule(
                conn, schedule_id, state=ScheduleState.ACTIVE, consecutive_failures=0
            )
            return self._make_pending(conn, schedule_id, actor)

        schedule = await self._ctx.db.run(work)
        self._ctx.wake()
        return schedule

    async def run_now(self, name: str, *, actor: str) -> Schedule:
        """Make the pending run due now."""

        def work(conn: Connection) -> Schedule:
            schedule_id, schedule = self._find(conn, name)
            if schedule.state is not ScheduleState.ACTIVE:
                raise Conflict(
                    f"schedule {name!r} is {schedule.state.value}; resume it before running it"
                )
            now = self._ctx.clock.now()
            if schedule.pending_job_id is None:
                store.update_schedule(conn, schedule_id, next_due_at=now)
                return self._make_pending(conn, schedule_id, actor)
            job_store.make_due(conn, schedule.pending_job_id, now)
            store.update_schedule(conn, schedule_id, next_due_at=now)
            return self._read(conn, schedule_id)

        schedule = await self._ctx.db.run(work)
        self._ctx.wake_due()
        return schedule

    async def tick(self, limit: int = 100) -> int:
        """Make the pending job of every active schedule that has none. Returns how
        many were made."""

        def work(conn: Connection) -> int:
            made = 0
            for schedule_id, _ in store.schedules_without_pending_job(conn, limit):
                self._make_pending(conn, schedule_id, "dispatcher")
                made += 1
            return made

        try:
            made = await self._ctx.db.run(work)
        except IntegrityError:
            # Another replica made the pending job first; the unique index refused ours.
            return 0
        if made:
            self._ctx.wake()
        return made

    def _make_pending(self, conn: Connection, schedule_id: int, actor: str) -> Schedule:
        schedule = self._read(conn, schedule_id)
        if schedule.state is ScheduleState.ACTIVE and schedule.pending_job_id is None:
            spec = dataclasses.replace(schedule.spec.job, not_before=schedule.next_due_at)
            [job] = self._admission.admit(
                conn,
                [spec],
                self._ctx.clock.now(),
                actor=f"schedule:{schedule.spec.name}" if actor == "dispatcher" else actor,
                schedule_id=schedule_id,
            )
            log.info("schedule %s: job %d due %s", schedule.spec.name, job.id, job.spec.not_before)
            schedule = self._read(conn, schedule_id)
        return schedule

    def _find(self, conn: Connection, name: str) -> tuple[int, Schedule]:
        if not name:
            raise InvalidInput("name is required: the schedule's name")
        found = store.get_schedule(conn, name, for_update=True)
        if found is None:
            raise NotFound(f"schedule {name!r} does not exist")
        return found

    def _read(self, conn: Connection, schedule_id: int) -> Schedule:
        schedule = store.get_schedule_by_id(conn, schedule_id)
        if schedule is None:
            raise NotFound(f"schedule {schedule_id} does not exist")
        return schedule
