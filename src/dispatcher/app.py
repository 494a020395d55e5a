"""The one place that wires dispatcher together: database, use cases, hub, gRPC server,
and the HTTP status page with its metrics.

``create_server`` builds a server that is not yet serving (tests start it on port 0);
``serve`` runs one until SIGTERM/SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from dispatcher.api.admin import AdminServicer, RuleServices, ServerIdentity
from dispatcher.api.admin_operations import AdminOperations
from dispatcher.api.auth import AuthInterceptor
from dispatcher.api.decoding import DecodingInterceptor
from dispatcher.api.distributor import DistributorServicer
from dispatcher.api.errors import ErrorMappingInterceptor
from dispatcher.api.handlers import WrappingServer
from dispatcher.api.metrics import RpcMetricsInterceptor
from dispatcher.api.reflection import enable_reflection
from dispatcher.api.scheduler import SchedulerServicer
from dispatcher.distributors.contract import DistributorKind
from dispatcher.distributors.dispatch import Dispatch
from dispatcher.distributors.setup import build_side, check_settings
from dispatcher.domain.clock import Clock
from dispatcher.domain.errors import DispatcherError, Unavailable
from dispatcher.domain.tokens import Role
from dispatcher.lifecycle.backoffs import Backoffs
from dispatcher.lifecycle.batching import GroupCommit
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.due import DueTimes
from dispatcher.lifecycle.executions import Executions
from dispatcher.lifecycle.explain import Explainer
from dispatcher.lifecycle.flavors import Flavors
from dispatcher.lifecycle.fleet import Fleet
from dispatcher.lifecycle.job_actions import JobActions
from dispatcher.lifecycle.jobs import Jobs
from dispatcher.lifecycle.messages import FlavorsChanged, Wake, decode
from dispatcher.lifecycle.schedules import Schedules
from dispatcher.lifecycle.sessions import Sessions
from dispatcher.lifecycle.status import Status
from dispatcher.lifecycle.tokens import Tokens
from dispatcher.lifecycle.watch import JobWatch
from dispatcher.logs import ContextFilter
from dispatcher.runners.hub import Hub, HubTiming
from dispatcher.settings import Settings
from dispatcher.store import migrate
from dispatcher.store.clock import DatabaseClock
from dispatcher.store.database import Database
from dispatcher.store.notify import Listener
from dispatcher.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    distributor_pb2,
    distributor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from dispatcher.web.app import Access, VerifyAdminToken, WebDeps, WebServer, check_access
from dispatcher.web.app import build as build_web
from dispatcher.web.metrics import Metrics

log = logging.getLogger(__name__)

CLOCK_REFRESH_SECONDS = 30.0

SERVICE_NAMES = (
    admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
    scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name,
    distributor_pb2.DESCRIPTOR.services_by_name["Distributor"].full_name,
)


@dataclass
class Server:
    """A built dispatcher: call ``start``, then ``stop``."""

    settings: Settings
    db: Database
    grpc_server: grpc.aio.Server
    hub: Hub
    commits: GroupCommit
    health: HealthServicer
    port: int
    database_clock: DatabaseClock | None = None
    auth: AuthInterceptor | None = None
    tokens: Tokens | None = None
    _clock_task: asyncio.Task[None] | None = None
    replica_id: str = ""
    web: WebServer | None = None
    # The bound HTTP port once started (None: no HTTP listener).
    http_port: int | None = None
    # The distributor loop (SPEC §7); its registry holds the configured instances.
    distributors: Dispatch | None = None
    # PostgreSQL: messages from the other replicas (SPEC §9).
    listener: Listener | None = None

    async def start(self) -> None:
        if self.web is not None:
            # First: a port that cannot be bound should stop the start before anything runs.
            self.http_port = await self.web.start()
        self.commits.start()
        if self.database_clock is not None:
            self._clock_task = asyncio.create_task(self._keep_clock(self.database_clock))
        if self.listener is not None:
            await self.listener.start()
        # One process per SQLite file: any other replica row there is a dead run of ours.
        await self.hub.start(sole_replica=self.db.kind == "sqlite")
        if self.distributors is not None:
            await self.distributors.start()
        if self.auth is not None:
            self.auth.start()
        await self.grpc_server.start()
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("dispatcher serving on port %d (%s)", self.port, self.db.kind)

    async def _keep_clock(self, clock: DatabaseClock) -> None:
        while True:
            await asyncio.sleep(CLOCK_REFRESH_SECONDS)
            try:
                offset = await self.db.call(clock.measure)
            except Exception:
                log.warning(
                    "could not read the database clock; keeping the last offset", exc_info=True
                )
            else:
                log.debug("database clock offset %.3f s", offset.total_seconds())

    async def stop(self) -> None:
        if self._clock_task is not None:
            self._clock_task.cancel()
        await self.health.enter_graceful_shutdown()
        if self.web is not None:
            await self.web.stop()
        if self.distributors is not None:
            await self.distributors.stop()
        await self.hub.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.grpc_server.stop(1.0)
        if self.auth is not None:
            await self.auth.stop()
        await self.commits.stop()
        self.db.close()
        log.info("dispatcher stopped")


def prepare_database(settings: Settings) -> Database:
    """Open the database and make sure its schema is current (or say how to make it so)."""
    db = Database(settings.database_url)
    if not migrate.is_up_to_date(db):
        auto = settings.migrate_on_start
        if auto is None:
            auto = db.kind == "sqlite"
        if not auto:
            db.close()
            raise Unavailable(
                "the database schema is not current: run `dispatcher migrate` "
                "(or start with --migrate)"
            )
        log.info("applying database migrations")
        migrate.upgrade(db)
    return db


async def create_server(
    settings: Settings,
    *,
    clock: Clock | None = None,
    verify_admin_token: VerifyAdminToken | None = None,
    distributor_kinds: Mapping[str, DistributorKind] | None = None,
) -> Server:
    """Build a dispatcher. Deadlines follow the database's clock (shared by every
    replica) unless a ``clock`` is given, as tests do. ``verify_admin_token`` decides
    which tokens open the status page and /metrics when ``http_open`` is false.
    ``distributor_kinds`` adds adapter kinds to the installed ones (tests: the fake)."""
    # Before anything starts: a bad distributor config stops the start (SPEC §7).
    check_settings(settings.distributors, distributor_kinds)
    if settings.http_listen:
        # Before anything starts: an open page must be on a loopback address.
        check_access(settings.http_listen, Access(open=settings.http_open))
    db = await asyncio.to_thread(prepare_database, settings)
    database_clock = None
    if clock is None:
        database_clock = DatabaseClock(db)
        offset = await db.call(database_clock.measure)
        log.info("database clock offset %.3f s", offset.total_seconds())
        clock = database_clock
    replica_id = f"{uuid.uuid4().hex[:12]}"
    commits = GroupCommit(db)
    deadlines = settings.deadlines()
    ctx = Context(
        db=db,
        clock=clock,
        limits=replace(settings.limits.domain(), distributors=frozenset(settings.distributors)),
        replica_id=replica_id,
        commits=commits,
        deadlines=deadlines,
        rules=settings.rules.domain(),
    )
    jobs = Jobs(ctx)
    executions = Executions(ctx)
    sessions = Sessions(ctx)
    timing = HubTiming(
        heartbeat_interval=settings.heartbeat_interval,
        idle_heartbeat_interval=settings.idle_heartbeat_interval,
        lease_renewal=deadlines.replica_lease / 3,
        startup_hold=deadlines.reattach_grace + timedelta(seconds=1),
        reattach_grace=deadlines.reattach_grace,
        shutdown_drain=timedelta(seconds=settings.shutdown_grace_seconds),
    )
    schedules = Schedules(ctx)
    metrics = Metrics(clock, lambda: hub.live_sessions)
    db.error_listeners.append(metrics.database_error)
    hub = Hub(
        jobs, executions, sessions, timing, schedules, observer=metrics, due_times=DueTimes(ctx)
    )
    jobs.hand_off_to(hub)
    ctx.wakeups.append(hub.wake)
    # Jobs submitted or requeued: some may wait for a due time the due loop must learn.
    ctx.wakeups.append(hub.due_may_change)
    ctx.due_wakeups.append(hub.wake_due)
    ctx.sweep_wakeups.append(hub.wake_sweep)
    loop = asyncio.get_running_loop()

    def wake_from_database_thread() -> None:
        loop.call_soon_threadsafe(ctx.wake)

    def due_from_database_thread() -> None:
        loop.call_soon_threadsafe(hub.due_may_change)

    db.wake_listeners.append(wake_from_database_thread)
    # A job ended or waits again, by whatever path (a result, the sweep, an expiry, a
    # cancel): a schedule's next run or a job behind its dedupe key may be due.
    db.due_listeners.append(due_from_database_thread)

    distributors = build_side(settings.distributors, ctx, distributor_kinds)
    listener = _listener(ctx, hub) if db.is_postgresql else None

    tokens = Tokens(ctx, cache_seconds=settings.auth.cache_seconds)
    auth = AuthInterceptor(
        tokens,
        max_streams_per_token=settings.limits.max_streams_per_token,
        recheck_seconds=settings.auth.stream_recheck_seconds,
    )
    max_bytes = settings.limits.max_message_bytes
    # Every method's handler goes inside these layers, the first outermost. Metrics count
    # the status code the error mapping chose; auth's refusals and undecodable requests
    # pass through the one error mapping; the token is checked before the request is
    # looked at.
    layers = [
        RpcMetricsInterceptor(metrics),
        ErrorMappingInterceptor(),
        auth,
        DecodingInterceptor(),
    ]
    plain = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            # Find dead runners at the transport level too (SPEC §6): ping idle
            # connections, and let runners ping us while they hold no calls.
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            ("grpc.http2.max_ping_strikes", 0),
        ],
    )
    server = WrappingServer(plain, layers)
    identity = ServerIdentity(replica_id=replica_id, database=db.kind, started_at=clock.now())
    admin_pb2_grpc.add_AdminServicer_to_server(
        AdminServicer(
            jobs,
            sessions,
            hub,
            clock,
            identity,
            RuleServices(Flavors(ctx), schedules, Backoffs(ctx), Explainer(ctx)),
            tokens,
            AdminOperations(JobWatch(ctx), JobActions(ctx), Fleet(ctx, sessions)),
        ),
        server,
    )
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SchedulerServicer(hub), server)
    distributor_pb2_grpc.add_DistributorServicer_to_server(
        DistributorServicer(distributors.service), server
    )
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
    )
    try:
        port = _listen(server, settings)
    except Unavailable:
        db.close()
        raise
    web = None
    if settings.http_listen:
        if verify_admin_token is None:
            verify_admin_token = _admin_token_check(tokens)
        access = Access(open=settings.http_open, verify_admin_token=verify_admin_token)
        deps = WebDeps(jobs, Status(ctx), metrics, clock, access, Explainer(ctx))
        web = WebServer(build_web(deps), settings.http_listen)
    return Server(
        settings,
        db,
        server,
        hub,
        commits,
        health,
        port,
        database_clock,
        auth=auth,
        tokens=tokens,
        replica_id=replica_id,
        web=web,
        distributors=distributors.dispatch,
        listener=listener,
    )


def _listener(ctx: Context, hub: Hub) -> Listener:
    """Messages from the replicas sharing the database: wake-ups go to every assigner of
    this replica (runners' and distributors'); cancels, drains and evictions to the hub,
    which holds the streams."""

    def on_payload(payload: str) -> None:
        message = decode(payload)
        if isinstance(message, Wake):
            ctx.wake()
        elif isinstance(message, FlavorsChanged):
            ctx.known_flavors.forget()
        elif message is not None:
            hub.receive(message)

    def on_connect() -> None:
        # Messages sent while the connection was down are lost: look at the database.
        ctx.known_flavors.forget()
        ctx.wake()
        ctx.wake_due()
        hub.look_soon()

    return Listener(ctx.db.engine, on_payload, on_connect)


def _admin_token_check(tokens: Tokens) -> VerifyAdminToken:
    """The status page and /metrics open to admin tokens (SPEC §10, §11)."""

    async def verify(secret: str) -> bool:
        try:
            token = await tokens.verify(secret)
        except DispatcherError:
            return False
        return token.role is Role.ADMIN

    return verify


def _listen(server: grpc.aio.Server, settings: Settings) -> int:
    tls = settings.tls
    if tls.cert_file is None or tls.key_file is None:
        port = server.add_insecure_port(settings.listen)
    else:
        try:
            chain = tls.cert_file.read_bytes()
            key = tls.key_file.read_bytes()
            client_ca = tls.client_ca_file.read_bytes() if tls.client_ca_file else None
        except OSError as exc:
            raise Unavailable(f"cannot read a TLS file: {exc}") from None
        credentials = grpc.ssl_server_credentials(
            [(key, chain)],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(settings.listen, credentials)
    if port == 0:
        raise Unavailable(f"cannot listen on {settings.listen}: address in use or invalid")
    return port


async def serve(settings: Settings, *, ready: asyncio.Event | None = None) -> None:
    """Run a dispatcher until SIGTERM or SIGINT, then shut down gracefully."""
    server = await create_server(settings)
    # Every line this process logs from now on is about this replica.
    replica = ContextFilter(replica=server.replica_id)
    for handler in logging.getLogger().handlers:
        handler.addFilter(replica)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    page = ""
    if server.http_port is not None:
        host = settings.http_listen.rpartition(":")[0] or "0.0.0.0"  # noqa: S104 (shown only)
        page = f"; status page on http://{host}:{server.http_port}/"
    tls = settings.tls
    transport = "" if not tls.enabled else ", mutual TLS" if tls.client_ca_file else ", TLS"
    print(
        f"dispatcher listening on port {server.port} ({server.db.kind}{transport}){page}",
        flush=True,
    )
    await stop.wait()
    log.info("signal received; shutting down")
    await server.stop()
