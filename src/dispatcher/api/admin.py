"""Admin RPCs: proto in, domain call, proto out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dispatcher import __version__
from dispatcher.api import convert
from dispatcher.domain.clock import Clock
from dispatcher.domain.errors import InvalidInput
from dispatcher.lifecycle.jobs import Jobs, encode_page_token
from dispatcher.lifecycle.sessions import Sessions
from dispatcher.lifecycle.tokens import Tokens
from dispatcher.runners.hub import Hub
from dispatcher.v1 import admin_pb2, admin_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

# Until tokens exist (SPEC §11), every admin call is made by "admin".
ACTOR = "admin"


@dataclass(frozen=True)
class ServerIdentity:
    replica_id: str
    database: str
    started_at: datetime


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        jobs: Jobs,
        sessions: Sessions,
        hub: Hub,
        clock: Clock,
        identity: ServerIdentity,
        tokens: Tokens,
    ) -> None:
        self._tokens = tokens
        self._jobs = jobs
        self._sessions = sessions
        self._hub = hub
        self._clock = clock
        self._identity = identity

    async def SubmitJob(
        self, request: admin_pb2.SubmitJobRequest, context: Context
    ) -> admin_pb2.SubmitJobResponse:
        [(job, created)] = await self._jobs.submit(
            [convert.spec_from_proto(request.spec)], actor=ACTOR
        )
        return admin_pb2.SubmitJobResponse(job=convert.job_to_proto(job), created=created)

    async def SubmitJobs(
        self, request: admin_pb2.SubmitJobsRequest, context: Context
    ) -> admin_pb2.SubmitJobsResponse:
        specs = [convert.spec_from_proto(s) for s in request.specs]
        results = await self._jobs.submit(specs, actor=ACTOR)
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
        job, order = await self._jobs.cancel(request.id, actor=ACTOR, reason=request.reason)
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
        return admin_pb2.GetServerInfoResponse(
            version=__version__,
            database=self._identity.database,
            replica_id=self._identity.replica_id,
            started_at=started,
            uptime=uptime,
        )

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
