"""dispatcher_runner: the runner library and the ``dispatcher-runner`` command.

:mod:`dispatcher_runner.runner` holds one Scheduler.Connect stream to a dispatcher and
runs the jobs it is assigned (:class:`~dispatcher_runner.runner.Runner`);
:mod:`dispatcher_runner.process` runs one job's command line.
"""

from __future__ import annotations

import platform
import sys


def host_platform() -> str:
    """This machine's platform as runners announce it and jobs ask for it: ``linux/x86_64``."""
    return f"{sys.platform}/{platform.machine()}"
