"""The runner's --server: one address, several replicas' addresses, or a gRPC target."""

from __future__ import annotations

import pytest

from dispatcher_runner.runner import Runner, RunnerConfig


def test_one_address() -> None:
    assert RunnerConfig(server="host:50051").addresses == ("host:50051",)


def test_several_replicas_are_tried_in_turn() -> None:
    config = RunnerConfig(server="a:1, b:2,c:3")
    assert config.addresses == ("a:1", "b:2", "c:3")
    runner = Runner(config)
    seen = [runner.address]
    for _ in range(3):
        runner._next_address()
        seen.append(runner.address)
    assert seen == ["a:1", "b:2", "c:3", "a:1"]


@pytest.mark.parametrize(
    "target",
    ["ipv4:127.0.0.1:5001,127.0.0.1:5002", "dns:///dispatcher.internal:50051", "unix:/run/d.sock"],
)
def test_a_grpc_target_with_a_scheme_is_one_address(target: str) -> None:
    assert RunnerConfig(server=target).addresses == (target,)


def test_an_empty_address_is_refused() -> None:
    with pytest.raises(ValueError, match="an empty address"):
        RunnerConfig(server="a:1,,b:2")
