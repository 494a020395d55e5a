"""A watch on the test process's memory. Once a run's pytest process grew past 24 GB
and the kernel killed it, which leaves no trace of what grew. Past the limit, this
writes every thread's stack and the test that was running to standard error, then
ends the run with exit status 3, so that the run fails with its evidence.

``DISPATCHER_TEST_RSS_LIMIT_MIB`` sets the limit (default 4096; 0 turns the watch off).
"""

from __future__ import annotations

import faulthandler
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_LIMIT_MIB = 4096
INTERVAL_SECONDS = 0.5


def _rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return int(match.group(1)) / 1024 if match else 0.0


def start(current_test: dict[str, str], uncapture: Callable[[], None]) -> None:
    """Watch in a daemon thread; ``current_test["id"]`` names the running test, and
    ``uncapture`` gives standard error back from pytest's capture before the report."""
    limit = float(os.environ.get("DISPATCHER_TEST_RSS_LIMIT_MIB", DEFAULT_LIMIT_MIB))
    if limit <= 0 or not Path("/proc/self/status").exists():
        return

    def watch() -> None:
        while True:
            time.sleep(INTERVAL_SECONDS)
            rss = _rss_mib()
            if rss > limit:
                uncapture()
                print(
                    f"\nmemory watch: the test process holds {rss:,.0f} MiB, over the "
                    f"limit of {limit:,.0f} MiB, during {current_test.get('id', '?')}; "
                    "every thread's stack follows",
                    file=sys.stderr,
                    flush=True,
                )
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                os._exit(3)

    threading.Thread(target=watch, name="memory-watch", daemon=True).start()
