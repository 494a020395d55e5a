"""The runner's job processes, on real subprocesses: outcomes, killing, log tails."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatcher_runner.process import JobProcess, LogTail

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")

DEADLINE = 10.0


async def eventually(condition: Callable[[], bool], *, within: float = DEADLINE) -> None:
    """Wait until ``condition()`` holds, failing after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within}s")
        await asyncio.sleep(0.01)


def is_dead(pid: int) -> bool:
    """Gone, or a zombie waiting for an init that may never reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: alive as far as we can tell
        return False
    return stat[stat.rfind(")") + 2] in "ZX"


def first_line_pid(process: JobProcess) -> int | None:
    lines = process.logtail().splitlines()
    return int(lines[0]) if lines and lines[0].isdigit() else None


async def test_exit_zero_succeeds_with_output() -> None:
    process = await JobProcess.start(["sh", "-c", "echo out; echo err >&2"])

    result = await process.wait()

    assert result.succeeded
    assert result.info == "exit status 0"
    assert result.returncode == 0
    assert process.logtail() == "out\nerr\n"


async def test_non_zero_exit_fails_with_status() -> None:
    process = await JobProcess.start(["sh", "-c", "exit 3"])

    result = await process.wait()

    assert not result.succeeded
    assert result.info == "exit status 3"
    assert result.returncode == 3


async def test_death_by_signal_is_named() -> None:
    process = await JobProcess.start(["sh", "-c", "kill -USR1 $$"])

    result = await process.wait()

    assert not result.succeeded
    assert result.info == "killed by signal SIGUSR1"
    assert result.returncode == -signal.SIGUSR1


async def test_missing_program_fails_clearly() -> None:
    process = await JobProcess.start(["no-such-program-for-dispatcher-tests", "x"])

    result = await process.wait()

    assert not result.succeeded
    assert result.info == (
        "cannot start 'no-such-program-for-dispatcher-tests': No such file or directory"
    )
    assert result.returncode is None
    assert process.pid is None
    assert result.info in process.logtail()


async def test_program_that_is_not_executable_fails_clearly(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)

    result = await (await JobProcess.start([str(script)])).wait()

    assert not result.succeeded
    assert result.info == f"cannot start {str(script)!r}: Permission denied"


async def test_empty_command_fails() -> None:
    result = await (await JobProcess.start([])).wait()

    assert not result.succeeded
    assert result.info == "no command to run"


async def test_argv_is_not_given_to_a_shell(tmp_path: Path) -> None:
    process = await JobProcess.start(["echo", "$HOME; touch", str(tmp_path / "x")])

    await process.wait()

    assert process.logtail() == f"$HOME; touch {tmp_path / 'x'}\n"
    assert not (tmp_path / "x").exists()


async def test_runs_in_its_own_session() -> None:
    process = await JobProcess.start(
        [sys.executable, "-c", "import os; print(os.getsid(0), os.getpgid(0))"]
    )

    await process.wait()

    assert process.logtail().split() == [str(process.pid), str(process.pid)]


async def test_kill_ends_the_whole_process_group() -> None:
    process = await JobProcess.start(["sh", "-c", "sleep 100 & echo $!; sleep 100"])
    await eventually(lambda: first_line_pid(process) is not None)
    grandchild = first_line_pid(process)
    assert grandchild is not None
    assert process.pid is not None
    assert not is_dead(grandchild)

    result = await process.kill()

    assert not result.succeeded
    assert result.info == "killed by signal SIGTERM"
    assert process.killed
    assert is_dead(process.pid)
    assert is_dead(grandchild)


async def test_kill_sends_sigkill_after_the_grace() -> None:
    # The shell ignores SIGTERM (so does the sleep it starts); only SIGKILL ends them.
    process = await JobProcess.start(
        ["sh", "-c", "trap '' TERM; sleep 100 & echo $!; wait"], kill_grace=0.2
    )
    await eventually(lambda: first_line_pid(process) is not None)
    grandchild = first_line_pid(process)
    assert grandchild is not None

    result = await process.kill()

    assert result.info == "killed by signal SIGKILL"
    assert is_dead(grandchild)


async def test_processes_left_behind_are_ended_when_the_job_exits() -> None:
    process = await JobProcess.start(["sh", "-c", "sleep 100 & echo $!"])

    result = await process.wait()

    assert result.info == "exit status 0"
    grandchild = first_line_pid(process)
    assert grandchild is not None
    assert is_dead(grandchild)


async def test_kill_after_exit_only_waits() -> None:
    process = await JobProcess.start(["true"])
    await process.wait()

    result = await process.kill()

    assert result.info == "exit status 0"


async def test_concurrent_kills_agree() -> None:
    process = await JobProcess.start(["sleep", "100"])

    first, second = await asyncio.gather(process.kill(), process.kill())

    assert first == second
    assert first.info == "killed by signal SIGTERM"


async def test_logtail_of_a_chatty_process_is_bounded() -> None:
    process = await JobProcess.start(
        [sys.executable, "-c", "for i in range(100000): print(f'line {i:06d}')"],
        tail_bytes=1000,
        tail_lines=50,
    )

    await process.wait()

    lines = process.logtail().splitlines()
    assert len(lines) == 50
    assert lines[-1] == "line 099999"
    assert lines[0] == "line 099950"
    assert len(process.logtail(100).encode()) <= 100
    assert process.logtail(100).splitlines()[-1] == "line 099999"


def test_logtail_keeps_the_last_bytes_and_starts_on_a_line() -> None:
    tail = LogTail(max_bytes=10, max_lines=100)

    tail.write(b"aaaa\nbbbbbb\ncccc\n")

    assert tail.text() == "cccc\n"
    assert tail.total_bytes == 17


def test_logtail_keeps_a_long_line_and_does_not_split_a_character() -> None:
    tail = LogTail(max_bytes=5, max_lines=100)

    tail.write("ééééé".encode())  # 10 bytes; the cut falls inside the third é

    assert tail.text() == "éé"


def test_logtail_keeps_the_last_lines() -> None:
    tail = LogTail(max_bytes=1000, max_lines=2)

    tail.write(b"one\ntwo\nthree\n")
    assert tail.text() == "two\nthree\n"
    tail.write(b"four")
    assert tail.text() == "three\nfour"


def test_logtail_text_can_be_shorter_than_what_is_kept() -> None:
    tail = LogTail(max_bytes=1000, max_lines=100)
    tail.write(b"first line\nsecond\n")

    assert tail.text(8) == "second\n"
    assert tail.text(7) == "second\n"
    assert tail.text(3) == "nd\n"


def test_logtail_replaces_undecodable_bytes() -> None:
    tail = LogTail()

    tail.write(b"ok \xff\xfe\n")

    assert tail.text() == "ok \ufffd\ufffd\n"


def test_logtail_rejects_a_zero_size() -> None:
    with pytest.raises(ValueError, match="at least one"):
        LogTail(max_bytes=0)
