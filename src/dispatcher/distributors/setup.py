"""Builds the distributor side of a dispatcher from its settings: the registry, the loop
and the service (app.py calls this; tests use it with the steerable fake added)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dispatcher.distributors.contract import DistributorKind
from dispatcher.distributors.dispatch import Dispatch, InstanceHost
from dispatcher.distributors.registry import Registry, build, check, discover_kinds
from dispatcher.distributors.service import DistributorService
from dispatcher.lifecycle.context import Context
from dispatcher.lifecycle.distributors import Distributions
from dispatcher.settings import DistributorSettings


@dataclass
class DistributorSide:
    registry: Registry
    dispatch: Dispatch
    service: DistributorService


def installed_kinds(
    extra: Mapping[str, DistributorKind] | None = None,
) -> dict[str, DistributorKind]:
    kinds = discover_kinds()
    kinds.update(extra or {})
    return kinds


def check_settings(
    configured: Mapping[str, DistributorSettings],
    extra: Mapping[str, DistributorKind] | None = None,
) -> None:
    """ConfigurationError naming the first bad instance, or nothing."""
    check(configured, installed_kinds(extra))


def build_side(
    configured: Mapping[str, DistributorSettings],
    ctx: Context,
    extra: Mapping[str, DistributorKind] | None = None,
) -> DistributorSide:
    hosts: dict[str, InstanceHost] = {}

    def host_for(name: str) -> InstanceHost:
        return hosts.setdefault(name, InstanceHost())

    registry = build(configured, installed_kinds(extra), host_for)
    distributions = Distributions(ctx)
    dispatch = Dispatch(registry, hosts, distributions, ctx.clock)
    ctx.wakeups.append(dispatch.wake)
    service = DistributorService(registry, distributions, dispatch.wake_instance)
    return DistributorSide(registry, dispatch, service)
