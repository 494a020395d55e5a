"""The status page over plain HTTP: paging, filters, partial updates, missing jobs."""

from __future__ import annotations

import html
import re

import aiohttp
import pytest

from dispatcher.v1 import admin_pb2, types_pb2
from tests.support.server import admin, open_channel, running_server
from tests.web.workload import UNSERVED, spec, submit

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def job_ids(page: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr id="job-(\d+)"', page)]


async def test_pages_filters_and_fragments(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        for n in range(5):
            await submit(channel, spec(UNSERVED, queue="even" if n % 2 else "odd"))

        async with http.get("/", params={"limit": "2"}) as response:
            first = await response.text()
        assert job_ids(first) == [5, 4]
        older = re.search(r'<a id="older" href="([^"]+)"', first)
        assert older is not None
        async with http.get(html.unescape(older.group(1))) as response:
            assert job_ids(await response.text()) == [3, 2]

        async with http.get("/", params={"queue": "even"}) as response:
            assert job_ids(await response.text()) == [4, 2]
        async with http.get("/", params={"state": "succeeded"}) as response:
            assert job_ids(await response.text()) == []

        async with http.get("/", params={"partial": "1"}) as response:
            fragment = await response.text()
        assert "<html" not in fragment
        assert job_ids(fragment) == [5, 4, 3, 2, 1]

        async with http.get("/", params={"state": "DONE"}) as response:
            assert response.status == 400
        async with http.get("/", params={"before": "not-a-token"}) as response:
            assert response.status == 400
        async with http.get("/jobs/999") as response:
            assert response.status == 404
            assert "job 999 does not exist" in await response.text()
        async with http.get("/jobs/abc") as response:
            assert response.status == 404
        async with http.get("/jobs/3") as response:
            page = await response.text()
        assert "Job 3" in page
        assert "None yet." in page  # no executions


async def test_the_page_escapes_what_submitters_wrote(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        job = await submit(channel, spec(UNSERVED, queue="q", command=("<script>x</script>",)))
        async with http.get(f"/jobs/{job}") as response:
            page = await response.text()
        assert "<script>x</script>" not in page
        assert "&lt;script&gt;x&lt;/script&gt;" in page


async def test_a_waiting_job_page_says_why_and_jobs_filter_by_flavor(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        open_channel(server) as channel,
        aiohttp.ClientSession(f"http://127.0.0.1:{server.http_port}") as http,
    ):
        await admin(channel).AddFlavor(
            admin_pb2.AddFlavorRequest(
                flavor=types_pb2.Flavor(name="mips-big", platform=UNSERVED, enabled=True)
            )
        )
        flavored = await submit(channel, spec(UNSERVED, queue="q"))
        other = await submit(channel, spec("haiku/x86_64", queue="q"))
        async with http.get("/", params={"flavor": "mips-big"}) as response:
            assert job_ids(await response.text()) == [flavored]
        async with http.get(f"/jobs/{other}") as response:
            page = await response.text()
        assert 'id="explain"' in page
        assert "no-runner" in page
        assert "no online runner with platform haiku/x86_64" in page
