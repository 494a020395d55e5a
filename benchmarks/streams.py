"""Memory and idle CPU of one `dispatcher serve` holding many idle runner streams.

For each stream count (1,000 / 5,000 / 10,000 by default), in each run: a fresh server
(SQLite or PostgreSQL) whose resident memory (VmRSS in /proc/PID/status) is read once it
has settled, with its CPU over a window (utime + stime in /proc/PID/stat) as the
baseline; then client processes (this module with --client) open the streams,
multiplexed over gRPC channels of --per-channel streams each, one TCP connection per
channel. Each stream sends a Hello, reads its Welcome, then idles like a real runner
with nothing to do: a heartbeat at the interval the Welcome gives. Once every stream is
welcomed and a settle time has passed, the server's CPU is read over the window (as %
of one core) and its RSS at the end; a run warns when the server (its /metrics) does not
count every stream as live at the end.

Each client process opens its channels one after the other, each channel's streams at
once; a Connect that ends before its Welcome (the server refuses a burst of new calls
it cannot take yet) is tried again after a random back-off, as a runner would, and
counted. The per-token stream limit is raised for the run (every stream uses the one
runner token); the soft open-files limit is raised to the hard limit, for the server
too. --server bare measures benchmarks.bare_scheduler instead: grpc.aio alone.

    python -m benchmarks.streams
    python -m benchmarks.streams --streams 1000 5000 10000 --database postgresql
    python -m benchmarks.streams --server bare    # the floor: grpc.aio alone
    python -m benchmarks.streams --streams 50 --window 1 --settle 0.5 --runs 1   # CI smoke

Prints the settings, then per run the baseline, the time to open the streams, RSS,
the per-stream delta (KiB) and idle CPU, and per stream count the median (min-max).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    DATABASE_HELP,
    Hello,
    RunnerPool,
    database,
    raise_open_files_limit,
    shown,
    spread,
    workdir,
)
from dispatcher.domain.tokens import Role
from tests.support.processes import ServerProcess, dispatcher_server, stop
from tests.support.tokens import authenticated_channel

PLATFORM = "bench/idle"
TICKS = os.sysconf("SC_CLK_TCK")
OPEN_TIMEOUT_SECONDS = 600.0


# --- the server's figures, from /proc ---------------------------------------------


def rss_kib(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    if match is None:
        raise RuntimeError(f"no VmRSS for process {pid}")
    return int(match.group(1))


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after it are plain.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of stat


def cpu_percent(pid: int, window: float) -> float:
    """The process's CPU over ``window`` seconds, as % of one core."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(window)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started) * 100


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def live_streams(server: ServerProcess) -> int:
    """The server's own count (/metrics dispatcher_runner_streams)."""
    with urllib.request.urlopen(
        f"http://127.0.0.1:{server.http_port}/metrics", timeout=30
    ) as response:
        text = response.read().decode()
    match = re.search(r"^dispatcher_runner_streams (\S+)", text, re.M)
    if match is None:
        raise RuntimeError("/metrics has no dispatcher_runner_streams")
    return int(float(match.group(1)))


# --- the client processes ---------------------------------------------------------


async def client(address: str, first: int, count: int, per_channel: int, rate: float) -> None:
    """Open ``count`` idle streams, one channel after the other (each channel's streams
    at once, the next once they are welcomed); say "welcomed N refused M {reason: n}"
    (M Connects ended before their Welcome and were tried again), then idle until
    standard input closes, saying "lost ..." for each stream that ends. With ``rate``,
    a channel waits until its streams are due at that many streams per second."""
    raise_open_files_limit()
    secret = os.environ["DISPATCHER_TOKEN"]
    options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
    pool = RunnerPool()
    pool.retry_refused = True
    channels = []
    started = time.monotonic()
    for offset in range(0, count, per_channel):
        if rate:
            await asyncio.sleep(max(0.0, started + offset / rate - time.monotonic()))
        channel = authenticated_channel(address, secret=secret, options=options)
        channels.append(channel)
        for i in range(first + offset, first + min(count, offset + per_channel)):
            pool.open(channel, Hello(f"idle-{i}", capacity=1, platform=PLATFORM))
        await pool.until(lambda: pool.welcomed >= pool.streams, fail_on_lost=False)
    reasons = Counter(refusal.partition(": ")[2] for refusal in pool.refused)
    print(f"welcomed {pool.welcomed} refused {len(pool.refused)} {dict(reasons)}", flush=True)
    loop = asyncio.get_running_loop()
    closed = loop.run_in_executor(None, sys.stdin.read)
    reported = 0
    while not closed.done():
        for lost in pool.lost[reported:]:
            print(f"lost {lost}", flush=True)
        reported = len(pool.lost)
        await asyncio.wait([closed], timeout=1.0)
    await pool.close()
    for channel in channels:
        await channel.close(grace=None)


@dataclass
class Clients:
    processes: list[subprocess.Popen[str]]

    def wait_welcomed(self) -> tuple[int, Counter[str]]:
        """How many Connects were refused (and tried again), in all, and why."""
        refused, reasons = 0, Counter[str]()
        for process in self.processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.match(r"welcomed \d+ refused (\d+) (.*)", line)
            if match is None:
                raise RuntimeError(f"a client process failed: {line!r} (exit {process.poll()})")
            refused += int(match.group(1))
            reasons.update(ast.literal_eval(match.group(2)))
        return refused, reasons

    def lost(self) -> list[str]:
        """Streams the clients saw end (read without blocking: the clients still run)."""
        found: list[str] = []
        for process in self.processes:
            assert process.stdout is not None
            os.set_blocking(process.stdout.fileno(), False)
            found += [line.strip() for line in process.stdout if line.startswith("lost")]
        return found

    def close(self) -> None:
        for process in self.processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                stop(process)


def shares(streams: int, processes: int) -> list[tuple[int, int]]:
    """(first stream, count) of each client process."""
    share = -(-streams // processes)
    return [(first, min(share, streams - first)) for first in range(0, streams, share)]


def start_clients(
    address: str,
    token: str,
    streams: int,
    args: argparse.Namespace,
    logs: Path,
) -> Clients:
    """``args.clients`` processes, each opening its share of ``streams``; their standard
    error goes to files in ``logs``."""
    started = []
    processes = args.clients
    for first, count in shares(streams, processes):
        command = [
            sys.executable,
            "-m",
            "benchmarks.streams",
            "--client",
            address,
            "--first",
            str(first),
            "--count",
            str(count),
            "--per-channel",
            str(args.per_channel),
            "--open-rate",
            str(args.open_rate / processes),
        ]
        with (logs / f"client-{first}.log").open("w") as log:
            started.append(
                subprocess.Popen(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env={**os.environ, "DISPATCHER_TOKEN": token},
                    # Out of the terminal's process group: Ctrl-C stops this process,
                    # which then ends the clients by closing their standard input.
                    start_new_session=True,
                )
            )
    return Clients(started)


# --- one measurement --------------------------------------------------------------


@dataclass
class Figures:
    baseline_kib: int
    baseline_cpu: float
    open_seconds: float
    refused: int
    refusals: Counter[str]
    rss_kib: int
    cpu: float
    server_files: int
    # The server's count of live streams at the end, and the streams that ended.
    live: int
    lost: list[str]

    def per_stream_kib(self, streams: int) -> float:
        return (self.rss_kib - self.baseline_kib) / streams


@dataclass
class Target:
    """The server measured: its process, where its streams go, with which token, and
    its own count of live streams (None: it keeps none)."""

    pid: int
    address: str
    token: str
    live: Callable[[], int] | None


@contextmanager
def dispatcher_target(kind: str, work: Path, streams: int) -> Iterator[Target]:
    """A `dispatcher serve` whose per-token stream limit lets every stream in."""
    settings = {"limits__max_streams_per_token": str(streams + 100)}
    with (
        database(kind, "streams", work) as url,
        dispatcher_server(url, work, settings=settings) as server,
    ):
        yield Target(
            server.process.pid,
            server.address,
            server.tokens.of(Role.RUNNER),
            lambda: live_streams(server),
        )


@contextmanager
def bare_target(work: Path) -> Iterator[Target]:
    """benchmarks.bare_scheduler: grpc.aio and nothing else."""
    with (work / "bare.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bare_scheduler"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert process.stdout is not None
        match = re.search(r"listening on port (\d+)", process.stdout.readline())
        if match is None:
            raise RuntimeError(f"the bare server did not start: {(work / 'bare.log').read_text()}")
        yield Target(process.pid, f"127.0.0.1:{match.group(1)}", "none", None)
    finally:
        stop(process)


def measure(target: Target, streams: int, args: argparse.Namespace, work: Path) -> Figures:
    pid = target.pid
    time.sleep(args.settle)
    baseline_cpu = cpu_percent(pid, args.window)
    baseline_kib = rss_kib(pid)
    started = time.monotonic()
    clients = start_clients(target.address, target.token, streams, args, work)
    try:
        refused, reasons = clients.wait_welcomed()
        open_seconds = time.monotonic() - started
        time.sleep(args.settle)
        cpu = cpu_percent(pid, args.window)
        rss = rss_kib(pid)
        files = open_files(pid)
        lost = clients.lost()
        live = target.live() if target.live is not None else streams - len(lost)
    finally:
        clients.close()
    return Figures(
        baseline_kib, baseline_cpu, open_seconds, refused, reasons, rss, cpu, files, live, lost
    )


def _refusals(figures: Figures) -> str:
    if not figures.refused:
        return ""
    reasons = ", ".join(f"{n} {why}" for why, n in figures.refusals.most_common(2))
    return f" ({figures.refused} Connects refused and tried again: {reasons})"


def _losses(figures: Figures, streams: int) -> str:
    """A warning when the server did not hold every stream to the end."""
    if figures.live == streams and not figures.lost:
        return ""
    first = f"; first: {figures.lost[0]}" if figures.lost else ""
    return (
        f"; WARNING: the server holds {figures.live:,} of {streams:,} streams, "
        f"{len(figures.lost)} ended{first}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1_000, 5_000, 10_000])
    parser.add_argument("--per-channel", type=int, default=100, help="streams per channel")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument(
        "--open-rate",
        type=float,
        default=0.0,
        help="streams opened per second, in all (default: as fast as they are welcomed)",
    )
    parser.add_argument("--window", type=float, default=20.0, help="CPU window, seconds")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before each measurement")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default="sqlite", help=DATABASE_HELP)
    parser.add_argument(
        "--server",
        choices=["dispatcher", "bare"],
        default="dispatcher",
        help="bare: benchmarks.bare_scheduler, grpc.aio alone, for reference",
    )
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client(args.client, args.first, args.count, args.per_channel, args.open_rate))
        return
    limit = raise_open_files_limit()
    serving = (
        "server: bare grpc.aio (benchmarks.bare_scheduler)"
        if args.server == "bare"
        else f"server: dispatcher, database {shown(args.database)}"
    )
    print(
        f"streams: idle runner streams {args.streams}, {args.per_channel} per channel (one "
        f"TCP connection each), from {args.clients} client processes, opened "
        f"{f'at {args.open_rate:g} per second' if args.open_rate else 'as fast as welcomed'}"
        f"; CPU over "
        f"{args.window:g} s after {args.settle:g} s settling; {args.runs} runs; "
        f"{serving}; open files limit {limit}",
        flush=True,
    )
    for streams in args.streams:
        channels = sum(-(-n // args.per_channel) for _, n in shares(streams, args.clients))
        print(f"{streams:,} streams over {channels:,} channels:", flush=True)
        runs: list[Figures] = []
        for run in range(1, args.runs + 1):
            with workdir() as work:
                target = (
                    bare_target(work)
                    if args.server == "bare"
                    else dispatcher_target(args.database, work, streams)
                )
                with target as server:
                    figures = measure(server, streams, args, work)
            runs.append(figures)
            print(
                f"  run {run}: baseline {figures.baseline_kib / 1024:.1f} MiB, "
                f"{figures.baseline_cpu:.2f}% CPU; opened in {figures.open_seconds:.1f} s"
                f"{_refusals(figures)}; "
                f"RSS {figures.rss_kib / 1024:.1f} MiB "
                f"(+{figures.per_stream_kib(streams):.1f} KiB per stream), "
                f"idle CPU {figures.cpu:.2f}% of a core; {figures.server_files:,} open files"
                f"{_losses(figures, streams)}",
                flush=True,
            )
        print(
            f"  median RSS {spread([r.rss_kib / 1024 for r in runs], unit=' MiB')}, "
            f"{spread([r.per_stream_kib(streams) for r in runs], unit=' KiB')} per stream "
            f"over a baseline of {spread([r.baseline_kib / 1024 for r in runs], unit=' MiB')}; "
            f"idle CPU {spread([r.cpu for r in runs], '{:.2f}', '%')} of a core "
            f"(baseline {spread([r.baseline_cpu for r in runs], '{:.2f}', '%')}); "
            f"opened in {spread([r.open_seconds for r in runs], unit=' s')}",
            flush=True,
        )


if __name__ == "__main__":
    main()
