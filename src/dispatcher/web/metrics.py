"""Prometheus metrics of one dispatcher server, in a registry of its own (several servers
in one process, as in tests, never share a series).

Counts of jobs and runners by state are read from the database at scrape time, so they
equal the database exactly; latencies are observed in-process after the commits that
cause them (the hub and the gRPC interceptor report here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dispatcher.domain.clock import Clock
from dispatcher.domain.model import Assignment
from dispatcher.domain.states import Outcome
from dispatcher.lifecycle.status import Counts

# Build work spans seconds to hours; waits span milliseconds to hours.
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 4 * 3600)
EXECUTION_BUCKETS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 2 * 3600, 4 * 3600, 12 * 3600)

# Start times of executions this replica assigned and has not seen end; bounded, because
# executions that are lost (not reported) never leave it otherwise.
MAX_TRACKED_EXECUTIONS = 100_000


class Metrics:
    """Implements the hub's observer and the RPC observer; renders the exposition."""

    def __init__(self, clock: Clock, live_streams: Callable[[], int]) -> None:
        self._clock = clock
        self.registry = CollectorRegistry()
        r = self.registry
        self._queue_wait = Histogram(
            "dispatcher_queue_wait_seconds",
            "How long a job was runnable (QUEUED, due) before a runner got it; first attempts.",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._submit_to_assign = Histogram(
            "dispatcher_submit_to_assign_seconds",
            "From submission to the first assignment to a runner (includes not-due time).",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._execution = Histogram(
            "dispatcher_execution_seconds",
            "From assignment to the runner's report, by outcome; executions this replica "
            "both assigned and saw end.",
            ["outcome"],
            buckets=EXECUTION_BUCKETS,
            registry=r,
        )
        self._rpcs = Counter(
            "dispatcher_grpc_server_handled",
            "gRPC calls handled, by service, method and final status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self._database_errors = Counter(
            "dispatcher_database_errors",
            "Database operations that failed (clients got UNAVAILABLE).",
            registry=r,
        )
        streams = Gauge(
            "dispatcher_runner_streams",
            "Runner streams (sessions) live on this replica now.",
            registry=r,
        )
        streams.set_function(live_streams)
        self._started: dict[int, datetime] = {}

    # --- the hub's observer -----------------------------------------------------------

    def assigned(self, assignment: Assignment) -> None:
        job = assignment.job
        claimed_at = job.updated_at
        if job.attempt == 1:
            self._submit_to_assign.observe(_seconds(claimed_at, job.created_at))
            runnable_since = max(job.created_at, job.spec.not_before or job.created_at)
            self._queue_wait.observe(_seconds(claimed_at, runnable_since))
        if len(self._started) >= MAX_TRACKED_EXECUTIONS:
            del self._started[next(iter(self._started))]
        self._started[assignment.execution_id] = claimed_at

    def finished(self, execution_id: int, outcome: Outcome) -> None:
        started = self._started.pop(execution_id, None)
        if started is not None:
            self._execution.labels(outcome.value).observe(_seconds(self._clock.now(), started))

    # --- the RPC observer and the database --------------------------------------------

    def rpc_handled(self, service: str, method: str, code: str) -> None:
        self._rpcs.labels(service, method, code).inc()

    def database_error(self) -> None:
        self._database_errors.inc()

    # --- exposition -------------------------------------------------------------------

    def render(self, counts: Counts | None) -> bytes:
        """The text exposition: in-process metrics plus ``counts`` as read just now from
        the database (None: the database could not be read)."""
        scrape = CollectorRegistry()
        scrape.register(_DatabaseCollector(counts))
        return generate_latest(self.registry) + generate_latest(scrape)


class _DatabaseCollector(Collector):
    def __init__(self, counts: Counts | None) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "dispatcher_database_up", "Whether the database answered this scrape (1) or not."
        )
        up.add_metric([], 0 if self._counts is None else 1)
        yield up
        if self._counts is None:
            return
        jobs = GaugeMetricFamily(
            "dispatcher_jobs", "Jobs in each state, read from the database.", labels=["state"]
        )
        for state, count in self._counts.jobs.items():
            jobs.add_metric([state.value], count)
        yield jobs
        runners = GaugeMetricFamily(
            "dispatcher_runners", "Known runners in each state.", labels=["state"]
        )
        for runner_state, count in self._counts.runners.items():
            runners.add_metric([runner_state.value], count)
        yield runners
        pressure = GaugeMetricFamily(
            "dispatcher_flavor_pressure",
            "Unfinished jobs assigned to each flavor, never below its minimum (SPEC 5.9).",
            labels=["flavor", "platform"],
        )
        unfinished = GaugeMetricFamily(
            "dispatcher_flavor_unfinished_jobs",
            "Unfinished jobs assigned to each flavor.",
            labels=["flavor", "platform"],
        )
        for p in self._counts.pressures:
            pressure.add_metric([p.flavor, p.platform], p.value)
            unfinished.add_metric([p.flavor, p.platform], p.unfinished)
        yield pressure
        yield unfinished


def _seconds(later: datetime, earlier: datetime) -> float:
    return max(0.0, (later - earlier).total_seconds())
