"""The HTTP application: routes, access control, and the server that runs it on the
dispatcher's event loop.

Access: the page and /metrics need an admin token (``Authorization: Bearer ...`` or the
cookie the token form sets) unless the listener is configured open, which is allowed only
on a loopback address. /healthz is always open: it says nothing but "ok". Only GET and
HEAD exist; every other method is refused, so nothing here can change anything."""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from dispatcher.domain.clock import Clock
from dispatcher.domain.errors import InvalidInput, NotFound, Unavailable
from dispatcher.domain.model import JobFilter
from dispatcher.domain.states import JobState
from dispatcher.lifecycle.explain import Explainer
from dispatcher.lifecycle.jobs import Jobs, encode_page_token
from dispatcher.lifecycle.status import Status
from dispatcher.web import html, pages
from dispatcher.web.metrics import Metrics

log = logging.getLogger(__name__)

# Decides whether a presented token is an admin token (SPEC §11); injected by the wiring.
VerifyAdminToken = Callable[[str], Awaitable[bool]]

TOKEN_COOKIE = "dispatcher_admin_token"  # noqa: S105 (the cookie's name, not a secret)
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
OPEN_PATHS = frozenset({"/healthz", "/favicon.ico"})
ALLOWED_METHODS = frozenset({"GET", "HEAD"})
NONCE = web.RequestKey("nonce", str)


async def refuse_every_token(token: str) -> bool:
    """The verifier until admin tokens exist: no token is an admin token."""
    return False


@dataclass(frozen=True)
class Access:
    open: bool
    verify_admin_token: VerifyAdminToken = refuse_every_token


@dataclass(frozen=True)
class WebDeps:
    jobs: Jobs
    status: Status
    metrics: Metrics
    clock: Clock
    access: Access
    explainer: Explainer | None = None


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidInput(f"http_listen: {address!r} is not host:port (e.g. 127.0.0.1:8080)")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (an empty host means all)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(address: str, access: Access) -> None:
    """Refuse an open page on a non-loopback address, before anything listens."""
    host, _ = split_host_port(address)
    if access.open and not is_loopback(host):
        raise InvalidInput(
            f"http_listen = {address!r} is not a loopback address, and http_open = true would "
            "show the status page and metrics to anyone who can reach it: set http_open = "
            "false (an admin token is then required), or listen on 127.0.0.1"
        )


def build(deps: WebDeps) -> web.Application:
    app = web.Application(middlewares=[_headers, _only_reads, _authorise(deps.access)])
    handlers = _Handlers(deps)
    app.router.add_get("/", handlers.overview)
    app.router.add_get("/jobs/{job_id}", handlers.job)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/healthz", handlers.healthz)
    # Browsers ask for it on every page; an empty answer keeps their consoles quiet.
    app.router.add_get("/favicon.ico", handlers.no_icon)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A fresh nonce per response: the page's own inline style and script run, nothing else.
    nonce = secrets.token_urlsafe(16)
    request[NONCE] = nonce
    try:
        response = await handler(request)
    except Unavailable as exc:
        response = web.Response(status=503, text=f"{exc}\n")
    response.headers.setdefault(
        "Content-Security-Policy",
        f"default-src 'none'; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'",
    )
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@web.middleware
async def _only_reads(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method not in ALLOWED_METHODS:
        raise web.HTTPMethodNotAllowed(
            request.method, sorted(ALLOWED_METHODS), text="read-only: only GET and HEAD\n"
        )
    return await handler(request)


def _authorise(access: Access) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if access.open or request.path in OPEN_PATHS:
            return await handler(request)
        token = _presented_token(request)
        if token and await access.verify_admin_token(token):
            return await handler(request)
        if token:
            log.warning("status page: a token was refused (%s)", request.remote)
        page = html.login_page(nonce=request[NONCE], failed=bool(token))
        return web.Response(
            status=401,
            text=page,
            content_type="text/html",
            headers={"WWW-Authenticate": 'Bearer realm="dispatcher"'},
        )

    return middleware


def _presented_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.cookies.get(TOKEN_COOKIE, "").strip()


class _Handlers:
    def __init__(self, deps: WebDeps) -> None:
        self._d = deps

    def _html(self, request: web.Request, title: str, body: str) -> web.Response:
        if request.query.get("partial") == "1":
            return web.Response(text=body, content_type="text/html")
        return web.Response(
            text=html.page(title, body, nonce=request[NONCE]), content_type="text/html"
        )

    async def overview(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            states = frozenset(JobState(s.upper()) for s in q.getall("state", []) if s)
        except ValueError:
            raise web.HTTPBadRequest(
                text=f"state must be one of {', '.join(s.value for s in JobState)}\n"
            ) from None
        try:
            limit = int(q.get("limit") or DEFAULT_PAGE_SIZE)
        except ValueError:
            raise web.HTTPBadRequest(text="limit must be a number\n") from None
        limit = max(1, min(limit, MAX_PAGE_SIZE))
        flt = JobFilter(
            states=states, queue=q.get("queue", "").strip(), flavor=q.get("flavor", "").strip()
        )
        try:
            page = await self._d.jobs.page(flt, page_size=limit, page_token=q.get("before", ""))
        except InvalidInput as exc:
            raise web.HTTPBadRequest(text=f"{exc}\n") from None
        overview = await self._d.status.overview()
        older = encode_page_token(page.next_after_id) if page.next_after_id else ""
        body = pages.overview_page(overview, page, flt, limit, self._d.clock.now(), older)
        return self._html(request, "status", body)

    async def job(self, request: web.Request) -> web.Response:
        raw = request.match_info["job_id"]
        if not raw.isdigit() or int(raw) <= 0:
            raise web.HTTPNotFound(text=f"no job {raw!r}\n")
        try:
            job = await self._d.jobs.get(int(raw))
        except NotFound as exc:
            raise web.HTTPNotFound(text=f"{exc}\n") from None
        explanation = None
        if job.state in (JobState.NOTICED, JobState.QUEUED) and self._d.explainer is not None:
            explanation = await self._d.explainer.explain(job.id)
        body = pages.job_page(job, self._d.clock.now(), explanation)
        return self._html(request, f"job {job.id}", body)

    async def metrics(self, request: web.Request) -> web.Response:
        try:
            counts = await self._d.status.counts()
        except Unavailable:
            counts = None
        body = self._d.metrics.render(counts)
        response = web.Response(body=body)
        # The exposition format's own media type, parameters included.
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def no_icon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            await self._d.status.version()
        except Unavailable:
            return web.Response(status=503, text="database unavailable\n")
        return web.Response(text="ok\n")


class WebServer:
    """The HTTP listener, on the running event loop; ``start`` binds, ``stop`` closes."""

    def __init__(self, app: web.Application, address: str) -> None:
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._host, self._port = split_host_port(address)
        self.port: int | None = None

    async def start(self) -> int:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise Unavailable(
                f"cannot listen on http_listen {self._host}:{self._port}: {exc.strerror}"
            ) from exc
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
