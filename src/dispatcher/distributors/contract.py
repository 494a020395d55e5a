"""The contract between the dispatcher and a distributor adapter (SPEC §7).

An adapter runs jobs on a backend that is not a streaming runner. It is a class found
through the entry-point group ``dispatcher.distributors`` (the entry point's name is the
adapter *kind*), and it is configured by name in the dispatcher's config file::

    [distributors.local]
    kind = "subprocess"     # the entry point
    parallelism = 2         # common keys: see DistributorSettings
    max_output_bytes = 4096 # every other key is the adapter's own config

The class (:class:`DistributorKind`) validates a config without doing I/O and builds one
instance per configured name; the instance (:class:`Distributor`) is what the dispatcher
calls. One instance serves many executions at once; all its methods may be called
concurrently from one event loop.

What the dispatcher promises:

* ``run`` is called once per execution, after the execution (and its notification
  token) is committed; the job is BUILDING then. The dispatcher may call it again for
  the same execution after a crash; adapters SHOULD return the same token then.
* The config in force is snapshotted into the execution; ``run`` gets it in
  ``execution.config``.
* Notifications reach ``handle_notification`` only after the dispatcher checked the
  execution's token (constant-time) and that the execution is still its job's current
  one. A forged, stale or replayed notification never reaches the adapter.
* When the backend does not push, ``get_status`` is called ``poll_timeout`` after
  ``run``, and then every ``poll_interval_seconds`` of the instance (SPEC §7 polling).
* ``cancel`` is called when an operator cancels the job, when it runs past its
  ``max_run``, and after the execution ended for any other reason the backend may not
  know about (lost, timed out): it must be idempotent, and cancelling a task that has
  ended already is not an error.

Errors (the luci-go distributor contract, in our words):

* :class:`TransientError`: the backend could not be reached or answered "later". The
  dispatcher retries with back-off up to the instance's ``run_attempts`` and marks the
  backend *down* (its jobs wait; it is probed with :meth:`Distributor.probe` at growing
  intervals until it answers).
* :class:`PermanentError`: retrying cannot help. From ``run``: the backend will never run
  this job, which becomes NOT_FOR_US with the message as the reason (requeueing would run
  into the same refusal forever, and NOT_FOR_US is SPEC §4's "will never run it"). From
  ``get_status``: within the instance's ``settle_seconds`` of ``run`` it counts as
  transient (the backend may not know the task yet); after that the execution is
  *missing*, and the job follows its on-lost policy like a job whose runner vanished.
* Any other exception is a bug in the adapter; it is treated as transient and logged.
* "No news" is ``BackendStatus(outcome=None)`` from ``get_status``, or ``IGNORE`` from
  ``handle_notification``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, Literal, Protocol

from dispatcher.domain.model import Job
from dispatcher.domain.states import Outcome

# handle_notification's "this notification carries no news; change nothing".
IGNORE: Final = "ignore"
Ignore = Literal["ignore"]

# A configuration: the TOML table of one instance minus the dispatcher's own keys.
Config = Mapping[str, Any]


class DistributorError(Exception):
    """Base of what adapters raise; the message is shown to operators as it is."""


class TransientError(DistributorError):
    """Try again later: the backend is unreachable, busy or not settled yet."""


class PermanentError(DistributorError):
    """Trying again cannot help (the backend refused the job, forgot the task)."""


class InvalidConfig(DistributorError):
    """The configuration is not one this adapter can use; say which key and why."""


@dataclass(frozen=True)
class BackendStatus:
    """What the backend says about one execution.

    ``outcome`` None means still running (no news). ``raw`` is JSON merged key by key
    into the job's raw data (the external adapter's "start/complete with raw JSON").
    """

    outcome: Outcome | None = None
    info: str = ""
    result: bytes = b""
    raw: Mapping[str, Any] | None = None

    @property
    def running(self) -> bool:
        return self.outcome is None


RUNNING = BackendStatus()


@dataclass(frozen=True)
class ExecutionTicket:
    """One execution as an adapter sees it."""

    id: int
    job_id: int
    # 1 for the first attempt of the job.
    number: int
    # The instance name (the job's distributor) and the config snapshot in force.
    distributor: str
    config: Config = field(default_factory=dict)
    # The secret a backend must present with Distributor.Notify for this execution.
    # Given to ``run`` only; the dispatcher keeps just its hash. Empty elsewhere.
    notify_token: str = field(default="", repr=False)


class Host(Protocol):
    """What the dispatcher offers an adapter instance."""

    def poll_soon(self) -> None:
        """Ask for ``get_status`` of this instance's due executions now, not at the next
        poll: for in-process backends that know at once when a task ended."""
        ...


class Distributor(Protocol):
    """One configured distributor instance."""

    async def run(self, job: Job, execution: ExecutionTicket) -> tuple[str, timedelta]:
        """Start ``job`` on the backend. Returns the backend's token for this task (the
        handle passed to every other method; not a secret) and the poll timeout: how
        long to wait for a notification before polling ``get_status`` (a backend that
        never pushes returns a short one; one that pushes, a long hedge)."""
        ...

    async def cancel(self, token: str) -> None:
        """Stop the task. Idempotent; a task that ended already is not an error."""
        ...

    async def get_status(self, token: str) -> BackendStatus:
        """The task's status now; outcome None while it runs."""
        ...

    def info_url(self, token: str) -> str:
        """A page about the task for people, or "". Local: no I/O, no validation."""
        ...

    def handle_notification(
        self, execution: ExecutionTicket, data: bytes, attrs: Mapping[str, str]
    ) -> BackendStatus | Ignore:
        """Turn an authenticated notification into a status, or IGNORE. Local: no I/O.
        Raise PermanentError for a body that can never be understood (the caller gets
        INVALID_ARGUMENT and nothing changes)."""
        ...

    def notify_token(self, execution_id: int) -> str | None:
        """The notification token for a new execution, or None (the usual answer): the
        dispatcher makes a random 256-bit one and hands it to ``run``. Only an adapter
        whose backend cannot be told a token (external: it is not started by us) derives
        one the backend can compute too."""
        ...

    async def probe(self) -> None:
        """A cheap check that the backend answers; raise TransientError when not. Called
        while the instance is down, at growing intervals."""
        ...

    async def close(self) -> None:
        """The dispatcher stops: release connections; running tasks may go on."""
        ...


class DistributorKind(Protocol):
    """What the entry point names: a class that validates configs and builds instances."""

    def validate(self, config: Config) -> None:
        """Raise InvalidConfig (naming the key) unless ``config`` is usable. No I/O."""
        ...

    def __call__(self, name: str, config: Config, host: Host) -> Distributor:
        """Build the instance ``name`` from a config ``validate`` accepted."""
        ...
