"""How a test waits: poll a condition until it holds, within a bound; never a bare sleep.

    await eventually(lambda: job_state(job_id) == "RUNNING")
    row = await eventually(fetch_row, timeout=2)          # returns the truthy value
    await eventually(runner_is_registered)                  # an async function works too
    eventually_sync(lambda: server.port is not None)       # from synchronous code

The condition may return a falsy value or raise ``AssertionError`` to mean "not yet"; any
other exception fails at once. When the time is up the test fails with the condition's
name, its last value and its last assertion message.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
DEFAULT_INTERVAL = 0.01

_NOT_YET = object()


async def eventually(
    condition: Callable[[], T | Awaitable[T]],
    # A polling bound, not a cancellation: asyncio.timeout would cut a condition mid-call.
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
    interval: float = DEFAULT_INTERVAL,
    *,
    message: str | None = None,
) -> T:
    """Call ``condition`` (sync or async) every ``interval`` seconds until it returns a
    truthy value, and return that value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result: object = _NOT_YET
        failure: AssertionError | None = None
        try:
            value = condition()
            result = await value if inspect.isawaitable(value) else value
        except AssertionError as exc:
            failure = exc
        if failure is None and result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_explain(condition, timeout, result, failure, message))
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
    *,
    message: str | None = None,
) -> T:
    """:func:`eventually` for synchronous code (threads, subprocesses, fixtures)."""
    deadline = time.monotonic() + timeout
    while True:
        result: object = _NOT_YET
        failure: AssertionError | None = None
        try:
            result = condition()
        except AssertionError as exc:
            failure = exc
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("eventually_sync() got an async condition; await eventually()")
        if failure is None and result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(_explain(condition, timeout, result, failure, message))
        time.sleep(interval)


def _explain(
    condition: Callable[[], object],
    timeout: float,
    result: object,
    failure: AssertionError | None,
    message: str | None,
) -> str:
    name = message or getattr(condition, "__qualname__", None) or repr(condition)
    if failure is not None:
        last = f"last assertion: {failure}".rstrip(": ")
    else:
        last = f"last value: {result!r}"
    return f"condition {name} did not hold within {timeout:g}s ({last})"
