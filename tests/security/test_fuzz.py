"""Random, malformed, oversized and adversarial requests to every RPC: never a crash
(INTERNAL), never UNKNOWN, never internals in a message, and a refused request leaves
the database as it was.

Each RPC gets the token of the role it needs, so the requests reach the servicers
rather than stopping at the auth check (the matrix test covers that). Hypothesis runs
derandomized and without its example database, so a run is repeatable and CI-cheap;
``DISPATCHER_FUZZ_REQUESTS`` raises or lowers the count (default 10,000).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections import Counter
from typing import Any

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.store.database import Database
from dispatcher.v1 import admin_pb2, admin_pb2_grpc, scheduler_pb2
from tests.support.fuzz import payloads
from tests.support.rpcs import ALL_RPCS, Rpc, call_raw, snapshot
from tests.support.server import open_channel, running_server

REQUESTS = int(os.environ.get("DISPATCHER_FUZZ_REQUESTS", "10000"))
# Requests sent at once per example: loopback round trips overlap.
BATCH = 20
# What must never reach a client: traces, driver and SQL text.
LEAKS = re.compile(
    r"Traceback|File \"|sqlalchemy|psycopg|sqlite3|(?-i:\b(SELECT|INSERT INTO|DELETE FROM"
    r"|UPDATE \w+ SET|WHERE)\b)",
    re.IGNORECASE,
)
BAD_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
# Not changed by requests: a refused request still proved its token (recording that is
# last_used_at's job), and the replica renews its own lease on a timer.
NOT_STATE = frozenset({"tokens.last_used_at", "replicas.lease_until"})


def cases() -> st.SearchStrategy[tuple[Rpc, list[bytes], bool]]:
    def for_rpc(rpc: Rpc) -> st.SearchStrategy[tuple[Rpc, list[bytes], bool]]:
        batch = st.lists(payloads(rpc.descriptor.input_type), min_size=BATCH, max_size=BATCH)
        # For streams: sometimes a valid Hello first, so later messages reach the session.
        hello_first = st.booleans() if rpc.client_streaming else st.just(False)
        return st.tuples(st.just(rpc), batch, hello_first)

    return st.sampled_from(ALL_RPCS).flatmap(for_rpc)


def hello(index: int) -> bytes:
    message = scheduler_pb2.ConnectRequest(
        hello=scheduler_pb2.Hello(name=f"fuzz-{index}", platform="linux/x86_64", capacity=1)
    )
    return message.SerializeToString()


async def test_fuzz_every_rpc(database_url: str) -> None:
    counts: Counter[str] = Counter()
    problems: list[str] = []
    started = time.monotonic()
    async with running_server(database_url) as server, open_channel(server) as channel:
        loop = asyncio.get_running_loop()
        db = Database(database_url)

        async def send(rpc: Rpc, batch: list[bytes], hello_first: bool) -> list[Any]:
            calls = [
                [hello(counts["requests"] + i), payload] if hello_first else [payload]
                for i, payload in enumerate(batch)
            ]
            return await asyncio.gather(
                *(call_raw(channel, rpc, c, deadline_seconds=30) for c in calls)
            )

        @settings(
            max_examples=REQUESTS // BATCH + 1,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(cases())
        def fuzz(case: tuple[Rpc, list[bytes], bool]) -> None:
            rpc, batch, hello_first = case
            before = snapshot(db, ignore=NOT_STATE)
            results = asyncio.run_coroutine_threadsafe(send(rpc, batch, hello_first), loop).result(
                120
            )
            counts["requests"] += len(results)
            for code, details in results:
                counts[code.name] += 1
                if code in BAD_CODES or LEAKS.search(details):
                    problems.append(f"{rpc}: {code.name} {details[:300]!r}")
            refused = all(code != grpc.StatusCode.OK for code, _ in results)
            if refused and not hello_first:
                counts["checked unchanged"] += len(results)
                after = snapshot(db, ignore=NOT_STATE)
                if after != before:
                    changed = {t: (before[t], after[t]) for t in after if after[t] != before[t]}
                    problems.append(f"{rpc}: refused requests changed {changed}")

        try:
            await asyncio.to_thread(fuzz)
        finally:
            db.close()
        # Still serving after all that.
        info = await admin_pb2_grpc.AdminStub(channel).GetServerInfo(
            admin_pb2.GetServerInfoRequest()
        )
        assert info.version
    took = time.monotonic() - started
    print(f"\nfuzz: {counts['requests']} requests in {took:.1f}s: {dict(counts)}")
    assert problems == []
    assert counts["requests"] >= REQUESTS


async def test_oversized_messages_are_refused_by_the_limit(database_url: str) -> None:
    limit = 64 * 1024
    async with (
        running_server(database_url, limits={"max_message_bytes": limit}) as server,
        open_channel(server) as channel,
    ):
        db = Database(database_url)
        try:
            before = snapshot(db, ignore=NOT_STATE)
            for rpc in ALL_RPCS:
                code, details = await call_raw(channel, rpc, [b"\x0a" + b"\xff" * (limit + 10)])
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (rpc, code, details)
                assert str(limit) in details or "larger than max" in details, details
            assert snapshot(db, ignore=NOT_STATE) == before
        finally:
            db.close()
