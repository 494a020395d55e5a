"""Who may see the status page and /metrics, and that nothing there changes anything."""

from __future__ import annotations

import aiohttp
import pytest

from dispatcher.domain.errors import InvalidInput
from tests.support.server import running_server

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

ADMIN_TOKEN = "an-admin-token-the-verifier-knows"


async def only_the_admin_token(token: str) -> bool:
    return token == ADMIN_TOKEN


async def get(port: int | None, path: str, **kw: object) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}", allow_redirects=False, **kw) as response,  # type: ignore[arg-type]
    ):
        return response.status, await response.text()


async def test_open_on_loopback_needs_no_token(database_url: str) -> None:
    async with running_server(database_url, http_open=True) as server:
        for path in ("/", "/metrics", "/healthz"):
            status, _ = await get(server.http_port, path)
            assert status == 200, path


async def test_closed_page_needs_a_token_the_verifier_accepts(database_url: str) -> None:
    async with running_server(
        database_url, http_open=False, verify_admin_token=only_the_admin_token
    ) as server:
        port = server.http_port
        for path in ("/", "/metrics", "/jobs/1"):
            status, body = await get(port, path)
            assert status == 401, path
            assert "admin token" in body
            status, body = await get(port, path, headers={"Authorization": "Bearer wrong"})
            assert status == 401, path
            assert "not accepted" in body
            status, _ = await get(port, path, cookies={"dispatcher_admin_token": "wrong"})
            assert status == 401, path
        status, body = await get(port, "/", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert status == 200
        assert "Runners" in body
        status, body = await get(port, "/metrics", cookies={"dispatcher_admin_token": ADMIN_TOKEN})
        assert status == 200
        assert "dispatcher_jobs" in body
        status, _ = await get(port, "/healthz")
        assert status == 200


async def test_without_a_verifier_no_token_is_accepted(database_url: str) -> None:
    async with running_server(database_url, http_open=False) as server:
        status, _ = await get(server.http_port, "/", headers={"Authorization": "Bearer x"})
        assert status == 401


async def test_an_open_page_on_a_reachable_address_refuses_to_start(database_url: str) -> None:
    with pytest.raises(InvalidInput, match="not a loopback address"):
        async with running_server(database_url, http_listen="0.0.0.0:0", http_open=True):
            pass
    # With a token required, any address is allowed.
    async with running_server(database_url, http_listen="0.0.0.0:0", http_open=False) as server:
        status, _ = await get(server.http_port, "/")
        assert status == 401


async def test_only_reads_are_allowed(database_url: str) -> None:
    async with (
        running_server(database_url, http_open=True) as server,
        aiohttp.ClientSession() as http,
    ):
        base = f"http://127.0.0.1:{server.http_port}"
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            for path in ("/", "/jobs/1", "/metrics", "/healthz", "/login", "/cancel"):
                async with http.request(method, base + path, data=b"x") as response:
                    assert response.status == 405, (method, path)
                    assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
        async with http.head(base + "/") as response:
            assert response.status == 200
        async with http.get(base + "/") as response:
            page = await response.text()
            assert "Content-Security-Policy" in response.headers
        assert 'method="post"' not in page.lower()
