"""Admin RPCs: proto in, domain call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher import __version__
from dispatcher.api import convert
from dispatcher.api.admin_operations import AdminOperations, OperationsMixin
from dispatcher.api.auth import caller_name
from dispatcher.domain.clock import Clock
from dispatcher.domain.errors import InvalidInput
from dispatcher.lifecycle.backoffs import Backoffs
from dispatcher.lifecycle.explain import Explainer
from dispatcher.lifecycle.flavors import Flavors
from dispatcher.lifecycle.jobs import Jobs, encode_page_token
from dispatcher.lifecycle.schedules import Schedules
from dispatcher.lifecycle.sessions import Sessions
from dispatcher.lifecycle.tokens import Tokens
from dispatcher.runners.hub import Hub
from dispatcher.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

# Until tokens exist (SPEC §11), every admin call is made by "admin".


@dataclass(frozen=True)
class ServerIdentity:
    replica_id: str
    database: str
    started_at: datetime


@dataclass(frozen=True)
class RuleServices:
    """The use cases behind the scheduling-rule RPCs."""

    flavors: Flavors
    schedules: Schedules
    backoffs: Backoffs
    explainer: Explainer


class AdminServicer(OperationsMixin, admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        jobs: Jobs,
        sessions: Sessions,
        hub: Hub,
        clock: Clock,
        identity: ServerIdentity,
        rules: RuleServices,
        tokens: Tokens,
        operations: AdminOperations,
    ) -> None:
        self._ops = operations
        self._tokens = tokens
        self._jobs = jobs
        self._sessions = sessions
        self._hub = hub
        self._clock = clock
        self._identity = identity
        self._rules = rules

    async def SubmitJob(
        self, request: admin_pb2.SubmitJobRequest, context: Context
    ) -> admin_pb2.SubmitJobResponse:
        [(job, created)] = await self._jobs.submit(
            [convert.spec_from_proto(request.spec)], actor=caller_name()
        )
        return admin_pb2.SubmitJobResponse(job=convert.job_to_proto(job), created=created)

    async def SubmitJobs(
        self, request: admin_pb2.SubmitJobsRequest, context: Context
    ) -> admin_pb2.SubmitJobsResponse:
        specs = [convert.spec_from_proto(s) for s in request.specs]
        results = await self._jobs.submit(specs, actor=caller_name())
        return admin_pb2.SubmitJobsResponse(
            results=[
                admin_pb2.SubmitJobResponse(job=convert.job_to_proto(job), created=created)
                for job, created in results
            ]
        )

    async def GetJob(
        self, request: admin_pb2.GetJobRequest, context: Context
    ) -> admin_pb2.GetJobResponse:
        job = await self._jobs.get(request.id)
        return admin_pb2.GetJobResponse(job=convert.job_to_proto(job))

    async def ListJobs(
        self, request: admin_pb2.ListJobsRequest, context: Context
    ) -> admin_pb2.ListJobsResponse:
        page = await self._jobs.page(
            convert.filter_from_proto(request),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        token = encode_page_token(page.next_after_id) if page.next_after_id else ""
        return admin_pb2.ListJobsResponse(
            jobs=[convert.job_to_proto(j) for j in page.jobs], next_page_token=token
        )

    async def CancelJob(
        self, request: admin_pb2.CancelJobRequest, context: Context
    ) -> admin_pb2.CancelJobResponse:
        job, order = await self._jobs.cancel(request.id, actor=caller_name(), reason=request.reason)
        if order is not None:
            self._hub.cancel(order)
        return admin_pb2.CancelJobResponse(job=convert.job_to_proto(job))

    async def ListRunners(
        self, request: admin_pb2.ListRunnersRequest, context: Context
    ) -> admin_pb2.ListRunnersResponse:
        runners = await self._sessions.list_runners()
        return admin_pb2.ListRunnersResponse(runners=[convert.runner_to_proto(r) for r in runners])

    async def DrainRunner(
        self, request: admin_pb2.DrainRunnerRequest, context: Context
    ) -> admin_pb2.DrainRunnerResponse:
        _require_name(request.name)
        runner = await self._hub.set_draining(
            request.name, True, request.reason or "drained by admin"
        )
        return admin_pb2.DrainRunnerResponse(runner=convert.runner_to_proto(runner))

    async def UndrainRunner(
        self, request: admin_pb2.UndrainRunnerRequest, context: Context
    ) -> admin_pb2.UndrainRunnerResponse:
        _require_name(request.name)
        runner = await self._hub.set_draining(request.name, False, "")
        return admin_pb2.UndrainRunnerResponse(runner=convert.runner_to_proto(runner))

    async def GetServerInfo(
        self, request: admin_pb2.GetServerInfoRequest, context: Context
    ) -> admin_pb2.GetServerInfoResponse:
        now = self._clock.now()
        started = Timestamp()
        started.FromDatetime(self._identity.started_at)
        uptime = Duration()
        uptime.FromTimedelta(now - self._identity.started_at)
        replicas = await self._ops.fleet.replicas()
        return admin_pb2.GetServerInfoResponse(
            version=__version__,
            database=self._identity.database,
            replica_id=self._identity.replica_id,
            started_at=started,
            uptime=uptime,
            live_replicas=len(replicas),
            replicas=[convert.replica_to_proto(r) for r in replicas],
            max_batch_size=self._ops.fleet.max_batch_size,
        )

    # --- history and explain -------------------------------------------------------

    async def GetJobHistory(
        self, request: admin_pb2.GetJobHistoryRequest, context: Context
    ) -> admin_pb2.GetJobHistoryResponse:
        events = await self._jobs.history(request.id)
        return admin_pb2.GetJobHistoryResponse(events=[convert.event_to_proto(e) for e in events])

    async def ExplainJob(
        self, request: admin_pb2.ExplainJobRequest, context: Context
    ) -> admin_pb2.ExplainJobResponse:
        return convert.explanation_to_proto(await self._rules.explainer.explain(request.id))

    # --- flavors and pressure ----------------------------------------------------

    async def AddFlavor(
        self, request: admin_pb2.AddFlavorRequest, context: Context
    ) -> admin_pb2.AddFlavorResponse:
        flavor = await self._rules.flavors.add(
            convert.flavor_from_proto(request.flavor), actor=caller_name()
        )
        return admin_pb2.AddFlavorResponse(flavor=convert.flavor_to_proto(flavor))

    async def ListFlavors(
        self, request: admin_pb2.ListFlavorsRequest, context: Context
    ) -> admin_pb2.ListFlavorsResponse:
        flavors = await self._rules.flavors.all()
        return admin_pb2.ListFlavorsResponse(flavors=[convert.flavor_to_proto(f) for f in flavors])

    async def EnableFlavor(
        self, request: admin_pb2.EnableFlavorRequest, context: Context
    ) -> admin_pb2.EnableFlavorResponse:
        flavor = await self._rules.flavors.set_enabled(request.name, True, actor=caller_name())
        return admin_pb2.EnableFlavorResponse(flavor=convert.flavor_to_proto(flavor))

    async def DisableFlavor(
        self, request: admin_pb2.DisableFlavorRequest, context: Context
    ) -> admin_pb2.DisableFlavorResponse:
        flavor = await self._rules.flavors.set_enabled(request.name, False, actor=caller_name())
        return admin_pb2.DisableFlavorResponse(flavor=convert.flavor_to_proto(flavor))

    async def DeleteFlavor(
        self, request: admin_pb2.DeleteFlavorRequest, context: Context
    ) -> admin_pb2.DeleteFlavorResponse:
        await self._rules.flavors.delete(request.name, actor=caller_name())
        return admin_pb2.DeleteFlavorResponse()

    async def GetPressures(
        self, request: admin_pb2.GetPressuresRequest, context: Context
    ) -> admin_pb2.GetPressuresResponse:
        pressures = await self._rules.flavors.pressures()
        return admin_pb2.GetPressuresResponse(
            pressures=[convert.pressure_to_proto(p) for p in pressures]
        )

    async def WatchPressures(
        self, request: admin_pb2.WatchPressuresRequest, context: Context
    ) -> AsyncIterator[admin_pb2.WatchPressuresResponse]:
        async for pressures in self._rules.flavors.watch():
            yield admin_pb2.WatchPressuresResponse(
                pressures=[convert.pressure_to_proto(p) for p in pressures]
            )

    # --- schedules ---------------------------------------------------------------

    async def CreateSchedule(
        self, request: admin_pb2.CreateScheduleRequest, context: Context
    ) -> admin_pb2.CreateScheduleResponse:
        schedule = await self._rules.schedules.create(
            convert.schedule_from_proto(request), actor=caller_name()
        )
        return admin_pb2.CreateScheduleResponse(schedule=convert.schedule_to_proto(schedule))

    async def ListSchedules(
        self, request: admin_pb2.ListSchedulesRequest, context: Context
    ) -> admin_pb2.ListSchedulesResponse:
        schedules = await self._rules.schedules.all()
        return admin_pb2.ListSchedulesResponse(
            schedules=[convert.schedule_to_proto(s) for s in schedules]
        )

    async def PauseSchedule(
        self, request: admin_pb2.PauseScheduleRequest, context: Context
    ) -> admin_pb2.PauseScheduleResponse:
        schedule = await self._rules.schedules.pause(request.name, actor=caller_name())
        return admin_pb2.PauseScheduleResponse(schedule=convert.schedule_to_proto(schedule))

    async def ResumeSchedule(
        self, request: admin_pb2.ResumeScheduleRequest, context: Context
    ) -> admin_pb2.ResumeScheduleResponse:
        schedule = await self._rules.schedules.resume(request.name, actor=caller_name())
        return admin_pb2.ResumeScheduleResponse(schedule=convert.schedule_to_proto(schedule))

    async def RunScheduleNow(
        self, request: admin_pb2.RunScheduleNowRequest, context: Context
    ) -> admin_pb2.RunScheduleNowResponse:
        schedule = await self._rules.schedules.run_now(request.name, actor=caller_name())
        return admin_pb2.RunScheduleNowResponse(schedule=convert.schedule_to_proto(schedule))

    # --- back-offs ---------------------------------------------------------------

    async def ListBackoffs(
        self, request: admin_pb2.ListBackoffsRequest, context: Context
    ) -> admin_pb2.ListBackoffsResponse:
        backoffs = await self._rules.backoffs.active()
        return admin_pb2.ListBackoffsResponse(
            backoffs=[convert.backoff_to_proto(b) for b in backoffs]
        )

    async def ClearBackoff(
        self, request: admin_pb2.ClearBackoffRequest, context: Context
    ) -> admin_pb2.ClearBackoffResponse:
        await self._rules.backoffs.clear(request.subject, request.process)
        return admin_pb2.ClearBackoffResponse()

    async def CreateToken(
        self, request: admin_pb2.CreateTokenRequest, context: Context
    ) -> admin_pb2.CreateTokenResponse:
        created = await self._tokens.create(request.name, convert.role_from_proto(request.role))
        return admin_pb2.CreateTokenResponse(
            token=convert.token_to_proto(created.token), secret=created.secret
        )

    async def ListTokens(
        self, request: admin_pb2.ListTokensRequest, context: Context
    ) -> admin_pb2.ListTokensResponse:
        tokens = await self._tokens.list()
        return admin_pb2.ListTokensResponse(tokens=[convert.token_to_proto(t) for t in tokens])

    async def DeleteToken(
        self, request: admin_pb2.DeleteTokenRequest, context: Context
    ) -> admin_pb2.DeleteTokenResponse:
        if not request.name:
            raise InvalidInput("name is required: the token's name (see ListTokens)")
        token = await self._tokens.delete(request.name)
        return admin_pb2.DeleteTokenResponse(token=convert.token_to_proto(token))


def _require_name(name: str) -> None:
    if not name:
        raise InvalidInput("name is required: the runner's name")
