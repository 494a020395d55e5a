"""Backends for the distributor tests: a real local HTTP backend for the http adapter,
and one harness per adapter kind that knows how to make its backend end a job.

Every harness configures one distributor instance (named after its kind) on a server
started by the test, with short poll timings so that a quiet backend is polled soon.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dispatcher.app import Server
from dispatcher.distributors.external import notify_token_for
from dispatcher.distributors.fake import FakeDistributor
from dispatcher.domain.states import Outcome
from dispatcher.settings import DistributorSettings
from dispatcher.v1 import distributor_pb2, distributor_pb2_grpc
from tests.support.eventually import eventually
from tests.support.server import open_channel, running_server

EXTERNAL_SECRET = "a shared secret for the external tests"
# Fast polls: a quiet backend is asked again within this long.
POLL_INTERVAL = 0.2
FAST = {"poll_interval_seconds": POLL_INTERVAL, "settle_seconds": 1.0, "probe_initial_seconds": 0.1}


@dataclass
class HttpBackend:
    """A backend for the http adapter: takes jobs, answers status and cancel requests."""

    url: str = ""
    received: dict[int, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    # What a new task's status reads until a test changes it.
    initial: dict[str, Any] = field(default_factory=lambda: {"state": "running"})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/jobs", self._take)
        app.router.add_get("/jobs/{token}", self._status)
        app.router.add_post("/jobs/{token}/cancel", self._cancel)
        return app

    async def _take(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body["job"]["payload"] == "cmVmdXNl":  # base64 of b"refuse"
            return web.Response(status=422, text="this backend does not take such jobs")
        self.received[body["execution_id"]] = body
        token = f"task-{body['execution_id']}"
        self.statuses.setdefault(token, dict(self.initial))
        return web.json_response({"id": token})

    async def _status(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if token not in self.statuses:
            return web.Response(status=404, text="no such task")
        return web.json_response(self.statuses[token])

    async def _cancel(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        self.cancelled.append(token)
        self.statuses[token] = {"state": "cancelled"}
        return web.json_response({})


@asynccontextmanager
async def http_backend() -> AsyncIterator[HttpBackend]:
    backend = HttpBackend()
    runner = web.AppRunner(backend.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    backend.url = f"http://127.0.0.1:{port}"
    try:
        yield backend
    finally:
        await runner.cleanup()


def distributor_settings(http_url: str) -> dict[str, DistributorSettings]:
    """Every adapter kind, one instance each, named after its kind."""
    return {
        "fake": DistributorSettings(kind="fake", poll_timeout_seconds=0.1, **FAST),
        "subprocess": DistributorSettings(kind="subprocess", kill_grace_seconds=1.0, **FAST),
        "http": DistributorSettings(
            kind="http",
            url=f"{http_url}/jobs",
            status_url=f"{http_url}/jobs/{{token}}",
            cancel_url=f"{http_url}/jobs/{{token}}/cancel",
            poll_timeout_seconds=0.1,
            **FAST,
        ),
        "external": DistributorSettings(kind="external", secret=EXTERNAL_SECRET, **FAST),
        "echo": DistributorSettings(kind="echo", **FAST),
    }


@dataclass
class Farm:
    """A running dispatcher with every adapter configured, and the HTTP backend."""

    server: Server
    http: HttpBackend

    def fake(self) -> FakeDistributor:
        assert self.server.distributors is not None
        instance = self.server.distributors.registry.instances["fake"]
        assert isinstance(instance.adapter, FakeDistributor)
        return instance.adapter

    async def notify(self, execution_id: int, token: str, body: dict[str, Any]) -> bool:
        async with open_channel(self.server) as channel:
            stub = distributor_pb2_grpc.DistributorStub(channel)
            response = await stub.Notify(
                distributor_pb2.NotifyRequest(
                    execution_id=execution_id, token=token, data=json.dumps(body).encode()
                )
            )
        return response.applied


@asynccontextmanager
async def farm(database_url: str, **settings: Any) -> AsyncIterator[Farm]:
    async with (
        http_backend() as backend,
        running_server(
            database_url,
            distributors=distributor_settings(backend.url),
            distributor_kinds={"fake": FakeDistributor},
            **settings,
        ) as server,
    ):
        yield Farm(server, backend)


# --- one harness per kind: how a job is made to run long, succeed or fail ------------

_STATE = {Outcome.SUCCEEDED: "succeeded", Outcome.FAILED: "failed"}


@dataclass(frozen=True)
class Harness:
    kind: str
    # Whether the dispatcher tells this backend to stop a cancelled task.
    stops_on_cancel: bool = True

    def spec(self, ending: Outcome | None) -> dict[str, Any]:
        """JobSpec fields of a job that ends so on its own (None: runs until told)."""
        if self.kind == "subprocess":
            script = {None: "sleep 30", Outcome.SUCCEEDED: "echo ok", Outcome.FAILED: "exit 3"}
            return {"command": ["sh", "-c", script[ending]]}
        if self.kind == "echo":
            payload = {None: b"wait", Outcome.SUCCEEDED: b"ok", Outcome.FAILED: b"fail"}
            return {"payload": payload[ending]}
        return {"command": ["build"]}

    async def end(self, farm: Farm, execution_id: int, outcome: Outcome) -> None:
        """Make the backend end the execution (for kinds whose jobs do not end alone)."""
        if self.kind == "fake":
            farm.fake().finish(farm.fake().token_of(execution_id), outcome)
        elif self.kind == "http":
            # BUILDING comes before the POST: the job is claimed, then handed over.
            body = await eventually(lambda: farm.http.received.get(execution_id))
            assert await farm.notify(execution_id, body["notify_token"], {"state": _STATE[outcome]})
        elif self.kind == "external":
            token = notify_token_for(EXTERNAL_SECRET, execution_id)
            started = {"state": "started", "raw": {"runner": "ext-1"}}
            assert await farm.notify(execution_id, token, started)
            done = {"state": _STATE[outcome], "raw": {"conclusion": _STATE[outcome]}}
            assert await farm.notify(execution_id, token, done)

    @property
    def ends_alone(self) -> bool:
        return self.kind in ("subprocess", "echo")


HARNESSES = [
    Harness("fake"),
    Harness("subprocess"),
    Harness("http"),
    Harness("external", stops_on_cancel=False),
    Harness("echo"),
]
