"""/metrics over real HTTP from a real server: it parses as Prometheus text, its job
counts equal the database's, and latencies and RPCs are counted; on both databases."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from dispatcher.app import Server
from dispatcher.domain.states import JobState
from dispatcher.store.tables import jobs
from dispatcher.v1 import admin_pb2
from tests.support.server import admin, open_channel, running_server
from tests.web.workload import FLAVOR, FLAVORED, every_state


@pytest.fixture
async def server(database_url: str) -> AsyncIterator[Server]:
    async with running_server(database_url) as built:
        yield built


async def scrape(server: Server) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics: name -> (sorted labels) -> value."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.http_port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def database_counts(server: Server) -> dict[str, int]:
    with server.db.transaction() as conn:
        rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
    return {state: int(count) for state, count in rows}


async def test_metrics_match_the_database_after_a_workload(server: Server) -> None:
    async with open_channel(server) as channel:
        work = await every_state(channel)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await admin(channel).GetJob(admin_pb2.GetJobRequest(id=999_999))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND

        samples = await scrape(server)

        in_database = database_counts(server)
        gauges = {dict(k)["state"]: v for k, v in samples["dispatcher_jobs"].items()}
        assert set(gauges) == {s.value for s in JobState}
        for state in JobState:
            assert gauges[state.value] == in_database.get(state.value, 0), state
        for state, ids in work.ids.items():
            assert gauges[state] == len(ids)
        assert samples["dispatcher_database_up"][()] == 1
        assert samples["dispatcher_runners"][(("state", "ONLINE"),)] == 1
        assert samples["dispatcher_runner_streams"][()] == 1
        flavor = (("flavor", FLAVOR), ("platform", FLAVORED))
        assert samples["dispatcher_flavor_pressure"][flavor] == 2  # its minimum
        assert samples["dispatcher_flavor_unfinished_jobs"][flavor] == 0

        # Four jobs were assigned (three finished, one building), each on its first try.
        assert samples["dispatcher_submit_to_assign_seconds_count"][()] == 4
        assert samples["dispatcher_queue_wait_seconds_count"][()] == 4
        executions = samples["dispatcher_execution_seconds_count"]
        for outcome in ("SUCCEEDED", "FAILED", "IRRECOVERABLE"):
            assert executions[(("outcome", outcome),)] == 1

        rpcs = samples["dispatcher_grpc_server_handled_total"]

        def handled(method: str, code: str) -> float:
            key = (
                ("grpc_code", code),
                ("grpc_method", method),
                ("grpc_service", "dispatcher.v1.Admin"),
            )
            return rpcs.get(key, 0)

        assert handled("SubmitJob", "OK") == sum(len(ids) for ids in work.ids.values())
        assert handled("CancelJob", "OK") == 1
        assert handled("GetJob", "NOT_FOUND") == 1
        assert samples["dispatcher_database_errors_total"][()] == 0

        assert work.runner is not None
        await work.runner.call.done_writing()


async def test_healthz_answers_without_a_token(server: Server) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{server.http_port}/healthz") as response,
    ):
        assert response.status == 200
        assert await response.text() == "ok\n"
