"""The distributor loop: one task per configured instance that hands its QUEUED jobs to
the adapter, polls executions whose backend stayed quiet, carries cancels to the backend,
and keeps the instance's health (SPEC §7, §3 backend health).

Each pass, in order: a down instance is probed when its probe is due and otherwise left
alone (its jobs wait); finished executions the backend was not told about are cancelled
there (timed out, lost, forced cancel); operator cancels are carried out; due polls are
made; executions whose run() never finished on any replica are declared missing; then
free parallelism is filled. A pass runs when woken (a submit, a freed slot, an adapter's
``poll_soon``), and otherwise at the earliest due poll or probe, at least every ``tick``.
Adapters are called outside any transaction, each call bounded by ``call_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from dispatcher.distributors.contract import (
    BackendStatus,
    ExecutionTicket,
    PermanentError,
)
from dispatcher.distributors.registry import Instance, Registry
from dispatcher.domain.clock import Clock
from dispatcher.domain.distribution import DistributorExecution
from dispatcher.lifecycle.distributors import Claimed, Distributions, Report

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long the backend of a run() may keep us waiting before it counts as a transient
# failure; and the first pause between tries of run (doubling, capped).
CALL_TIMEOUT = timedelta(seconds=30)
RETRY_PAUSE = timedelta(seconds=0.2)
RETRY_PAUSE_MAX = timedelta(seconds=5)
# An execution whose run() has not recorded a token this long (past the settle time) is
# taken for one whose replica died during run().
UNSTARTED_GRACE = timedelta(seconds=60)
# Far enough ahead that every open execution is due: poll_soon polls them all.
_EVERYTHING = timedelta(days=3650)


def to_report(status: BackendStatus) -> Report:
    return Report(status.outcome, status.info, status.result, status.raw)


class InstanceHost:
    """What one adapter instance may ask of the loop (the contract's Host)."""

    def __init__(self) -> None:
        self.wakeup = asyncio.Event()
        self.poll_all = False
        # Counts poll_soon calls: a run that saw it move asks again once its token is
        # recorded, since a poll before that could not find the execution.
        self.poll_requests = 0

    def poll_soon(self) -> None:
        self.poll_all = True
        self.poll_requests += 1
        self.wakeup.set()

    def wake(self) -> None:
        self.wakeup.set()


class Dispatch:
    def __init__(
        self,
        registry: Registry,
        hosts: dict[str, InstanceHost],
        distributions: Distributions,
        clock: Clock,
        *,
        tick: timedelta = timedelta(seconds=1),
        call_timeout: timedelta = CALL_TIMEOUT,
    ) -> None:
        self.registry = registry
        self._hosts = hosts
        self._distributions = distributions
        self._clock = clock
        self._tick = tick
        self._call_timeout = call_timeout
        self._tasks: list[asyncio.Task[None]] = []
        # Runs in flight on this replica: their executions have no backend token yet.
        self._running: dict[int, asyncio.Task[None]] = {}
        # When each instance last looked for work that is rarely there (releases, runs
        # that never completed): once per tick is soon enough, and keeps passes cheap.
        self._last_sweep: dict[str, datetime] = {}

    def wake(self) -> None:
        for host in self._hosts.values():
            host.wake()

    def wake_instance(self, name: str) -> None:
        host = self._hosts.get(name)
        if host is not None:
            host.wake()

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._serve(instance), name=f"distributor:{name}")
            for name, instance in self.registry.instances.items()
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._running.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._running.clear()
        for instance in self.registry.instances.values():
            try:
                await instance.adapter.close()
            except Exception:
                log.exception("distributor %s did not close cleanly", instance.name)

    async def _serve(self, instance: Instance) -> None:
        host = self._hosts[instance.name]
        while True:
            try:
                await self.step(instance)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("distributor %s: a pass failed; retrying", instance.name)
            wait = await self._until_next(instance)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await host.wakeup.wait()
            host.wakeup.clear()

    async def _until_next(self, instance: Instance) -> float:
        due: list[datetime] = []
        next_poll = await self._distributions.next_poll_at(instance.name)
        if next_poll is not None:
            due.append(next_poll)
        health = (await self._distributions.health()).get(instance.name)
        if health is not None and not health.up and health.next_probe_at is not None:
            due.append(health.next_probe_at)
        wait = self._tick.total_seconds()
        if due:
            wait = min(wait, (min(due) - self._clock.now()).total_seconds())
        return max(wait, 0.005)

    async def step(self, instance: Instance) -> None:
        """One pass over one instance (tests call it directly)."""
        health = (await self._distributions.health()).get(instance.name)
        if health is not None and not health.up:
            if health.next_probe_at is not None and health.next_probe_at > self._clock.now():
                return
            if not await self._probe(instance):
                return
        now = self._clock.now()
        last = self._last_sweep.get(instance.name)
        if last is None or now - last >= self._tick:
            self._last_sweep[instance.name] = now
            await self._release(instance)
            await self._find_unstarted(instance)
        await self._cancel(instance)
        await self._poll(instance)
        await self._claim(instance)

    # --- health -------------------------------------------------------------------

    async def _probe(self, instance: Instance) -> bool:
        try:
            await self._call(instance.adapter.probe())
        except Exception as exc:
            await self._down(instance, f"probe failed: {_describe(exc)}")
            return False
        await self._distributions.mark_up(instance.name)
        log.info("distributor %s is up again", instance.name)
        return True

    async def _down(self, instance: Instance, cause: str) -> None:
        health = await self._distributions.mark_down(
            instance.name,
            cause,
            initial=instance.timing.probe_initial,
            longest=instance.timing.probe_max,
        )
        log.warning(
            "distributor %s is down since %s (%s); next probe in %.1f s",
            instance.name,
            health.down_since.isoformat() if health.down_since else "?",
            cause,
            health.probe_interval.total_seconds(),
        )

    # --- handing out --------------------------------------------------------------

    async def _claim(self, instance: Instance) -> None:
        claimed = await self._distributions.claim(
            instance.name,
            instance.config,
            instance.timing.parallelism,
            instance.adapter.notify_token,
        )
        for one in claimed:
            task = asyncio.create_task(self._run(instance, one), name=f"run:{one.execution_id}")
            self._running[one.execution_id] = task
            task.add_done_callback(self._forget_run(one.execution_id))

    def _forget_run(self, execution_id: int) -> Callable[[asyncio.Task[None]], None]:
        def forget(_: asyncio.Task[None]) -> None:
            self._running.pop(execution_id, None)

        return forget

    async def _run(self, instance: Instance, claimed: Claimed) -> None:
        ticket = ExecutionTicket(
            id=claimed.execution_id,
            job_id=claimed.job.id,
            number=claimed.number,
            distributor=instance.name,
            config=instance.config,
            notify_token=claimed.notify_token,
        )
        host = self._hosts[instance.name]
        requests_before = host.poll_requests
        pause = RETRY_PAUSE
        cause = ""
        for attempt in range(1, instance.timing.run_attempts + 1):
            try:
                token, poll_timeout = await self._call(instance.adapter.run(claimed.job, ticket))
            except PermanentError as exc:
                cause = f"distributor {instance.name} refused the job: {exc}"
                await self._distributions.give_back(ticket.id, cause, permanent=True)
                log.warning("job %d: %s", claimed.job.id, cause, extra={"job_id": claimed.job.id})
                return
            except Exception as exc:
                cause = f"run failed (try {attempt}): {_describe(exc)}"
                if attempt < instance.timing.run_attempts:
                    await asyncio.sleep(pause.total_seconds())
                    pause = min(pause * 2, RETRY_PAUSE_MAX)
                continue
            url = instance.adapter.info_url(token)
            if not await self._distributions.record_run(ticket.id, token, url, poll_timeout):
                # Cancelled or timed out while run() was under way: stop it at once.
                await self._quietly(instance, instance.adapter.cancel(token))
                await self._distributions.released(ticket.id)
            if host.poll_requests != requests_before:
                # The task may have ended before its token was recorded (a quick
                # command): the poll it asked for found nothing, so ask again.
                host.poll_soon()
            # The loop may be sleeping until a later deadline: this poll may come first.
            host.wake()
            log.info(
                "job %d handed to distributor %s (execution %d)",
                claimed.job.id,
                instance.name,
                ticket.id,
                extra={"job_id": claimed.job.id, "execution_id": ticket.id},
            )
            return
        # Down first: giving the job back wakes the loop, which must not hand it out again.
        await self._down(instance, cause)
        await self._distributions.give_back(
            ticket.id, f"distributor {instance.name} unavailable: {cause}", permanent=False
        )

    # --- polling ------------------------------------------------------------------

    async def _poll(self, instance: Instance) -> None:
        host = self._hosts[instance.name]
        everything = host.poll_all
        host.poll_all = False
        due = await self._distributions.due_polls(
            instance.name, ahead=_EVERYTHING if everything else timedelta(0)
        )
        # At once, not one after another: one slow answer must not delay the others.
        await asyncio.gather(*(self._poll_one(instance, e) for e in due))

    async def _poll_one(self, instance: Instance, execution: DistributorExecution) -> None:
        timing = instance.timing
        try:
            status = await self._call(instance.adapter.get_status(execution.backend_token))
        except PermanentError as exc:
            now = self._clock.now()
            started = execution.started_at or now
            if now - started >= timing.settle:
                cause = f"distributor {instance.name} lost the task: {exc}"
                await self._distributions.missing(execution.id, cause)
                return
            await self._distributions.poll_later(
                execution.id,
                now + min(timing.poll_interval, timing.settle),
                execution.poll_failures,
            )
            return
        except Exception as exc:
            failures = execution.poll_failures + 1
            await self._distributions.poll_later(
                execution.id, self._clock.now() + timing.poll_interval, failures
            )
            if failures >= timing.run_attempts:
                await self._down(instance, f"get_status failed: {_describe(exc)}")
            return
        await self._distributions.report(
            execution.id, to_report(status), poll_interval=timing.poll_interval, what="poll"
        )

    async def _find_unstarted(self, instance: Instance) -> None:
        older = instance.timing.settle + UNSTARTED_GRACE
        for execution in await self._distributions.unstarted(instance.name, older):
            if execution.id not in self._running:
                await self._distributions.missing(
                    execution.id, f"distributor {instance.name}: run() never completed"
                )

    # --- stopping -----------------------------------------------------------------

    async def _cancel(self, instance: Instance) -> None:
        for execution in await self._distributions.cancel_requested(instance.name):
            if await self._quietly(instance, instance.adapter.cancel(execution.backend_token)):
                await self._distributions.confirm_cancel(
                    execution.id, f"cancelled; distributor {instance.name} stopped it"
                )

    async def _release(self, instance: Instance) -> None:
        for execution in await self._distributions.unreleased(instance.name):
            if execution.id in self._running:
                continue  # its run() cancels the task when it cannot record it
            if not execution.backend_token or await self._quietly(
                instance, instance.adapter.cancel(execution.backend_token)
            ):
                await self._distributions.released(execution.id)

    async def _quietly(self, instance: Instance, call: Awaitable[None]) -> bool:
        try:
            await self._call(call)
        except Exception as exc:
            log.warning("distributor %s: cancel failed: %s", instance.name, _describe(exc))
            return False
        return True

    async def _call(self, call: Awaitable[T]) -> T:
        async with asyncio.timeout(self._call_timeout.total_seconds()):
            return await call


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__
