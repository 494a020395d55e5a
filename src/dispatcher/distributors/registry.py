"""The distributor registry: adapter kinds discovered from the entry-point group
``dispatcher.distributors``, and the configured instances built from them.

Registration is explicit (STYLE 9): the registry reads entry points at start-up and
builds exactly the instances the config names; importing a module registers nothing.
Every instance is checked before anything runs, and the first problem stops the start
with a message that names the instance: an unknown kind, a name used twice (names are
compared case-insensitively, and "runners" is the runner pool's), a kind registered by
two packages, or a config the adapter refuses (its own message).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from dispatcher.distributors.contract import (
    Config,
    Distributor,
    DistributorKind,
    Host,
    InvalidConfig,
)
from dispatcher.domain.errors import InvalidInput
from dispatcher.domain.validation import RUNNER_POOL
from dispatcher.settings import DistributorSettings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dispatcher.distributors"
# Instance names go into job specs, logs and URLs: the same rule as platforms, shorter.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class ConfigurationError(InvalidInput):
    """A distributor configuration the dispatcher cannot start with."""


def discover_kinds(group: str = ENTRY_POINT_GROUP) -> dict[str, DistributorKind]:
    """Every adapter kind installed, by entry-point name. A kind offered by two different
    packages is refused: which one runs would depend on install order."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=group):
        other = found.get(point.name)
        if other is not None and other.value != point.value:
            raise ConfigurationError(
                f"distributor kind {point.name!r} is registered twice ({other.value} and "
                f"{point.value}); uninstall one of the packages"
            )
        found[point.name] = point
    kinds: dict[str, DistributorKind] = {}
    for name, point in sorted(found.items()):
        try:
            kinds[name] = cast(DistributorKind, point.load())
        except Exception as exc:  # a broken plugin must not hide behind a trace
            raise ConfigurationError(
                f"distributor kind {name!r} ({point.value}) cannot be loaded: {exc}"
            ) from None
    return kinds


@dataclass(frozen=True)
class Timing:
    """The dispatcher's own keys of one instance, as durations."""

    parallelism: int = 4
    poll_interval: timedelta = timedelta(seconds=30)
    settle: timedelta = timedelta(seconds=30)
    run_attempts: int = 3
    probe_initial: timedelta = timedelta(seconds=1)
    probe_max: timedelta = timedelta(seconds=300)

    @classmethod
    def of(cls, settings: DistributorSettings) -> Timing:
        return cls(
            parallelism=settings.parallelism,
            poll_interval=timedelta(seconds=settings.poll_interval_seconds),
            settle=timedelta(seconds=settings.settle_seconds),
            run_attempts=settings.run_attempts,
            probe_initial=timedelta(seconds=settings.probe_initial_seconds),
            probe_max=timedelta(seconds=settings.probe_max_seconds),
        )


@dataclass
class Instance:
    """One configured distributor: its name, kind, config in force, and adapter."""

    name: str
    kind: str
    config: dict[str, Any]
    timing: Timing
    adapter: Distributor


@dataclass
class Registry:
    instances: dict[str, Instance] = field(default_factory=dict)
    kinds: dict[str, DistributorKind] = field(default_factory=dict)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.instances)

    def get(self, name: str) -> Instance | None:
        return self.instances.get(name)

    def validate(self, kind: str, config: Config) -> None:
        """Check ``config`` for ``kind`` (the ValidateConfig RPC); ConfigurationError
        with the adapter's message when it is refused."""
        _validated(self._kind(kind, "the config"), kind, config, "the config")

    def _kind(self, kind: str, where: str) -> DistributorKind:
        if kind == RUNNER_POOL:
            raise ConfigurationError(
                f"{where}: kind {RUNNER_POOL!r} is the runner pool, which is always there "
                "and takes no config"
            )
        found = self.kinds.get(kind)
        if found is None:
            known = ", ".join(sorted(self.kinds)) or "none installed"
            raise ConfigurationError(
                f"{where}: unknown distributor kind {kind!r} (installed: {known}); install "
                f"the package that provides it (entry point group {ENTRY_POINT_GROUP})"
            )
        return found


def check(
    configured: Mapping[str, DistributorSettings], kinds: Mapping[str, DistributorKind]
) -> None:
    """Check every configured instance without building any (``dispatcher config check``)."""
    build(configured, kinds, None)


def build(
    configured: Mapping[str, DistributorSettings],
    kinds: Mapping[str, DistributorKind],
    host_for: Callable[[str], Host] | None,
) -> Registry:
    """The registry of ``configured`` instances; ``host_for`` None only checks them."""
    registry = Registry(kinds=dict(kinds))
    seen: dict[str, str] = {RUNNER_POOL: RUNNER_POOL}
    for name, settings in configured.items():
        where = f"distributors.{name}"
        if not _NAME.match(name):
            raise ConfigurationError(
                f"{where}: the name is not valid: up to 64 letters, digits and . _ -, "
                "starting with a letter or digit"
            )
        twin = seen.get(name.lower())
        if twin is not None:
            what = "the runner pool's name" if twin == RUNNER_POOL else f"distributors.{twin}"
            raise ConfigurationError(f"{where}: duplicate distributor name (same as {what})")
        seen[name.lower()] = name
        config = settings.adapter_config()
        kind = _validated(registry._kind(settings.kind, where), settings.kind, config, where)
        if host_for is None:
            continue
        adapter = kind(name, config, host_for(name))
        registry.instances[name] = Instance(
            name, settings.kind, config, Timing.of(settings), adapter
        )
        log.info("distributor %s (%s) configured", name, settings.kind)
    return registry


def _validated(kind: DistributorKind, name: str, config: Config, where: str) -> DistributorKind:
    try:
        kind.validate(config)
    except InvalidConfig as exc:
        raise ConfigurationError(f"{where}: invalid config for kind {name!r}: {exc}") from None
    except Exception as exc:  # an adapter's bug is still a config the dispatcher refuses
        raise ConfigurationError(
            f"{where}: kind {name!r} could not check its config: {type(exc).__name__}: {exc}"
        ) from None
    return kind


def secrets_removed(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config fit to show: values of keys that look secret are replaced."""
    hidden = ("secret", "token", "password", "key")
    return {
        k: ("(hidden)" if any(h in k.lower() for h in hidden) else v) for k, v in config.items()
    }
