"""Every RPC of every service x every kind of caller, against the table in the README
(and the proto service comments): 0 mismatches, and refused calls change nothing.
The RPCs come from the proto descriptors, so a new RPC is covered without an edit."""

from __future__ import annotations

import grpc
import pytest

from dispatcher.domain.tokens import PREFIX, Role, new_random_part
from dispatcher.store.database import Database
from dispatcher.v1 import admin_pb2, admin_pb2_grpc
from tests.support.rpcs import ALL_RPCS, Rpc, call_raw, snapshot
from tests.support.server import open_channel, running_server, tokens_of

# The documented table (README, "Tokens and roles"): who may call what.
SERVICE_ROLES = {
    "dispatcher.v1.Admin": {Role.ADMIN},
    "dispatcher.v1.Scheduler": {Role.RUNNER},
    "dispatcher.v1.Distributor": {Role.DISTRIBUTOR},
}
METHOD_ROLES = {
    "/dispatcher.v1.Distributor/ListDistributors": {Role.DISTRIBUTOR, Role.ADMIN},
    "/dispatcher.v1.Distributor/ValidateConfig": {Role.DISTRIBUTOR, Role.ADMIN},
}
UNAUTHENTICATED_CALLERS = ("none", "malformed", "wrong", "deleted")
CALLERS = (*UNAUTHENTICATED_CALLERS, *(r.value for r in Role))
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


def allowed(rpc: Rpc) -> set[Role]:
    return METHOD_ROLES.get(rpc.path, SERVICE_ROLES[rpc.service])


def expected(rpc: Rpc, caller: str) -> str:
    if caller in UNAUTHENTICATED_CALLERS:
        return "UNAUTHENTICATED"
    return "allowed" if Role(caller) in allowed(rpc) else "PERMISSION_DENIED"


def test_every_rpc_belongs_to_a_documented_service() -> None:
    assert len(ALL_RPCS) >= 14
    for rpc in ALL_RPCS:
        assert rpc.service in SERVICE_ROLES, f"{rpc} belongs to no documented service"


async def test_the_authorisation_matrix(database_url: str) -> None:
    async with (
        running_server(database_url) as server,
        open_channel(server) as with_tokens,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as bare,
    ):
        tokens = tokens_of(server)
        admin = admin_pb2_grpc.AdminStub(with_tokens)
        doomed = await admin.CreateToken(
            admin_pb2.CreateTokenRequest(name="doomed", role=admin_pb2.TOKEN_ROLE_ADMIN)
        )
        await admin.DeleteToken(admin_pb2.DeleteTokenRequest(name="doomed"))
        admin_id = tokens.admin.split("_")[1]
        secrets: dict[str, str | None] = {
            "none": None,
            "malformed": "not-a-dispatcher-token",
            "wrong": f"{PREFIX}_{admin_id}_{new_random_part()}",
            "deleted": doomed.secret,
            **{role.value: tokens.of(role) for role in Role},
        }
        db = Database(database_url)
        mismatches: list[str] = []
        calls = 0
        try:
            for caller in CALLERS:
                secret = secrets[caller]
                metadata = (("authorization", f"Bearer {secret}"),) if secret else None
                for rpc in ALL_RPCS:
                    want = expected(rpc, caller)
                    if want != "allowed":
                        # An allowed call before this one may have started a re-read
                        # of its token, which records a use; not this call's write.
                        assert server.tokens is not None
                        await server.tokens.settled()
                    before = snapshot(db) if want != "allowed" else None
                    payload = rpc.request_class()().SerializeToString()
                    code, details = await call_raw(bare, rpc, [payload], metadata=metadata)
                    calls += 1
                    got = code.name if code in REFUSED else "allowed"
                    if got != want:
                        mismatches.append(
                            f"{rpc} as {caller}: {code.name} {details!r}; want {want}"
                        )
                    if before is not None:
                        assert details, f"{rpc} as {caller}: refused without a message"
                        assert snapshot(db) == before, f"{rpc} as {caller} changed the database"
        finally:
            db.close()
    assert mismatches == []
    assert calls == len(ALL_RPCS) * len(CALLERS)


async def test_health_and_reflection_need_no_token(database_url: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with (
        running_server(database_url) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as bare,
    ):
        health = await health_pb2_grpc.HealthStub(bare).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        call = reflection_pb2_grpc.ServerReflectionStub(bare).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = [s.name async for r in call for s in r.list_services_response.service]
        assert "dispatcher.v1.Admin" in services


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Basic YWRtaW46YWRtaW4=", "must read 'Bearer <token>'"),
        ("Bearer ", "must read 'Bearer <token>'"),
        ("Bearer dsp_1_short", "is not a dispatcher token"),
    ],
)
async def test_a_bad_authorization_header_says_what_is_wrong(
    database_url: str, header: str, message: str
) -> None:
    async with (
        running_server(database_url) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as bare,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin_pb2_grpc.AdminStub(bare).GetServerInfo(
                admin_pb2.GetServerInfoRequest(), metadata=(("authorization", header),)
            )
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert message in (caught.value.details() or "")
