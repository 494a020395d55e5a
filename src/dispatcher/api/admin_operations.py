"""Admin RPCs that act on one job or one runner, and the job watch: proto in, domain
call, proto out. A mixin of ``AdminServicer`` (api/admin.py), kept apart by area."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from dispatcher.api import convert
from dispatcher.api.auth import caller_name
from dispatcher.lifecycle.fleet import Fleet
from dispatcher.lifecycle.job_actions import JobActions
from dispatcher.lifecycle.watch import JobWatch, WatchFilter
from dispatcher.runners.hub import Hub
from dispatcher.v1 import admin_pb2

Context = grpc.aio.ServicerContext[Any, Any]

# Every admin call is made by "admin" (tokens carry a role, not a person).


@dataclass(frozen=True)
class AdminOperations:
    """The use cases behind these RPCs."""

    watch: JobWatch
    actions: JobActions
    fleet: Fleet


class OperationsMixin:
    _ops: AdminOperations
    _hub: Hub

    async def WatchJobs(
        self, request: admin_pb2.WatchJobsRequest, context: Context
    ) -> AsyncIterator[admin_pb2.WatchJobsResponse]:
        flt = WatchFilter(
            states=convert.states_from_proto(request.states, "states"),
            queue=request.queue,
            platform=request.platform,
            labels=frozenset(request.labels),
        )
        after = request.after_cursor if request.HasField("after_cursor") else None
        async for change in self._ops.watch.changes(flt, after):
            response = admin_pb2.WatchJobsResponse(cursor=change.cursor)
            if change.event is not None:
                response.event.CopyFrom(convert.event_to_proto(change.event))
            if change.job is not None:
                response.job.CopyFrom(convert.job_to_proto(change.job))
            yield response

    async def RetryJob(
        self, request: admin_pb2.RetryJobRequest, context: Context
    ) -> admin_pb2.RetryJobResponse:
        job, original = await self._ops.actions.retry(
            request.id, actor=caller_name(), reason=request.reason
        )
        return admin_pb2.RetryJobResponse(job=convert.job_to_proto(job), retry_of=original)

    async def RunJobNow(
        self, request: admin_pb2.RunJobNowRequest, context: Context
    ) -> admin_pb2.RunJobNowResponse:
        job = await self._ops.actions.run_now(request.id, actor=caller_name())
        return admin_pb2.RunJobNowResponse(job=convert.job_to_proto(job))

    async def DeleteJob(
        self, request: admin_pb2.DeleteJobRequest, context: Context
    ) -> admin_pb2.DeleteJobResponse:
        job = await self._ops.actions.delete(request.id, actor=caller_name(), reason=request.reason)
        return admin_pb2.DeleteJobResponse(job=convert.job_to_proto(job))

    async def EvictRunner(
        self, request: admin_pb2.EvictRunnerRequest, context: Context
    ) -> admin_pb2.EvictRunnerResponse:
        eviction = await self._ops.fleet.evict(
            request.name, actor=caller_name(), reason=request.reason
        )
        # The sessions are closed; their streams end now here, and on other replicas
        # when the notification arrives.
        self._hub.end_sessions(eviction.session_ids)
        return admin_pb2.EvictRunnerResponse(
            runner=convert.runner_to_proto(eviction.runner),
            closed_sessions=eviction.closed_sessions,
            jobs=[convert.job_to_proto(j) for j in eviction.jobs],
        )
