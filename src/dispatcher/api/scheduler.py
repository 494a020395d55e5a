"""Scheduler.Connect: one runner stream, translated to hub calls and back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration

from dispatcher.api import convert
from dispatcher.domain.errors import InvalidInput, Unavailable
from dispatcher.domain.model import Assignment, ResultReport
from dispatcher.lifecycle.messages import CancelOrder
from dispatcher.runners.hub import Drain, Hub, LiveSession, Outgoing, ResultAck
from dispatcher.v1 import scheduler_pb2, scheduler_pb2_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Requests = AsyncIterator[scheduler_pb2.ConnectRequest]


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def Connect(
        self, request_iterator: Requests, context: Context
    ) -> AsyncIterator[scheduler_pb2.ConnectResponse]:
        if not self._hub.accepting:
            raise Unavailable("the dispatcher is shutting down; connect to another replica")
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("message") != "hello":
            raise InvalidInput("the first message on a Connect stream must be a Hello")
        session = await self._hub.open(convert.hello_from_proto(first.hello))
        interval = Duration()
        interval.FromTimedelta(self._hub.timing.heartbeat_interval)
        grace = Duration()
        grace.FromTimedelta(self._hub.timing.reattach_grace)
        idle_interval = Duration()
        idle_interval.FromTimedelta(self._hub.timing.idle_heartbeat_interval)
        yield scheduler_pb2.ConnectResponse(
            welcome=scheduler_pb2.Welcome(
                session_id=session.id,
                resume_token=session.resume_token,
                heartbeat_interval=interval,
                execution_ids=sorted(session.held),
                reattach_grace=grace,
                idle_heartbeat_interval=idle_interval,
            )
        )
        reason, goodbye = "the stream ended", False
        protocol_error: list[str] = []
        reader = asyncio.create_task(self._read(request_iterator, session, protocol_error))
        try:
            while (message := await session.outbox.get()) is not None:
                yield _to_proto(message)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                reason, goodbye = await reader
            await asyncio.shield(self._hub.close(session, reason, goodbye=goodbye))
        if protocol_error:
            raise InvalidInput(protocol_error[0])

    async def _read(
        self, requests: Requests, session: LiveSession, errors: list[str]
    ) -> tuple[str, bool]:
        """Apply the runner's messages until the stream ends; returns why it ended and
        whether the runner said goodbye. A message that breaks the protocol ends the
        stream, its reason put in ``errors``."""
        pending: set[asyncio.Task[None]] = set()
        reason, goodbye = "the runner closed the stream", False
        try:
            async for request in requests:
                kind = request.WhichOneof("message")
                if kind == "goodbye":
                    reason = f"goodbye: {request.goodbye.reason or 'no reason given'}"
                    goodbye = True
                    break
                work = self._handle(session, request, kind)
                if work is not None:
                    # Results and acks are applied concurrently, so one slow commit
                    # does not hold up the stream's other messages.
                    task = asyncio.create_task(_guard(work, session, errors))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
        except grpc.aio.AioRpcError as exc:
            reason = f"stream broken: {exc.code().name}"
        except InvalidInput as exc:
            errors.append(str(exc))
            reason = f"protocol error: {exc}"
        finally:
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            session.end()
        return reason, goodbye

    def _handle(
        self, session: LiveSession, request: scheduler_pb2.ConnectRequest, kind: str | None
    ) -> Any:
        hub = self._hub
        hub.heard(session)
        if kind == "result":
            r = request.result
            report = ResultReport(
                execution_id=r.execution_id,
                outcome=convert.outcome_from_proto(r.outcome),
                info=r.info,
                data=r.data,
                logtail=r.logtail,
            )
            return hub.result(session, report)
        if kind == "accept":
            return hub.accept(session, request.accept.execution_id)
        if kind == "refuse":
            return hub.refuse(session, request.refuse.execution_id, request.refuse.reason)
        if kind == "commit_point":
            return hub.commit_point(session, request.commit_point.execution_id)
        if kind == "cancel_ack":
            return hub.cancel_ack(session, request.cancel_ack.execution_id)
        if kind == "heartbeat":
            if not request.heartbeat.executions:
                return None  # heard: nothing to write now
            progress = [
                (
                    p.execution_id,
                    p.logtail or None,
                    p.progress_percent if p.progress_percent >= 0 else None,
                )
                for p in request.heartbeat.executions
            ]
            return hub.heartbeat(session, progress)
        if kind == "hello":
            raise InvalidInput("Hello may only be the first message of a stream")
        log.warning("runner %s sent an empty message; ignored", session.name)
        return None


async def _guard(work: Awaitable[None], session: LiveSession, errors: list[str]) -> None:
    try:
        await work
    except InvalidInput as exc:
        errors.append(str(exc))
        session.end()
    except Exception:
        # The database failed under this report; the runner will resend on reconnect.
        log.exception("runner %s: a report could not be applied; closing its stream", session.name)
        session.end()


def _to_proto(message: Outgoing) -> scheduler_pb2.ConnectResponse:
    if isinstance(message, Assignment):
        # Filled in place: a job handed to the constructors would be copied twice over.
        response = scheduler_pb2.ConnectResponse()
        assign = response.assign
        assign.execution_id = message.execution_id
        convert.fill_job(assign.job, message.job)
        return response
    if isinstance(message, CancelOrder):
        return scheduler_pb2.ConnectResponse(
            cancel=scheduler_pb2.Cancel(execution_id=message.execution_id, reason=message.reason)
        )
    if isinstance(message, ResultAck):
        return scheduler_pb2.ConnectResponse(
            result_ack=scheduler_pb2.ResultAck(
                execution_id=message.execution_id,
                applied=message.verdict.applied,
                reason=message.verdict.reason,
            )
        )
    assert isinstance(message, Drain)
    return scheduler_pb2.ConnectResponse(drain=scheduler_pb2.Drain(reason=message.reason))
