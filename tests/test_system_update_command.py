"""How the updater layer runs an updater's command: real processes, real process groups.

The updaters fork helpers (SWUpdate does), so a timeout, a cancellation or a normal exit must
end the whole group; output comes line by line as it is printed; the command never sees the
agent's environment.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from jobs_agent_handlers.system_update import UpdaterError
from jobs_agent_handlers.system_update.command import LINE_MAX, run_command

DEADLINE = 10.0


def alive(pid: int) -> bool:
    """Running (a zombie counts as gone). A process that ends between the open and the read
    makes the read fail with ESRCH (ProcessLookupError): gone too."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rfind(")") + 2] != "Z"


async def wait_for(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def helper_script(pidfile: Path, then: str) -> list[str]:
    """sh that starts a long-lived helper in the background, notes its pid, then does `then`."""
    return ["sh", "-c", f'sleep 300 & echo $! > "$1"; {then}', "sh", str(pidfile)]


async def test_a_timeout_kills_the_command_and_its_helpers(tmp_path: Path) -> None:
    pidfile = tmp_path / "helper.pid"

    with pytest.raises(UpdaterError, match=r"^swupdate: timed out after 0.5 s"):
        await run_command(helper_script(pidfile, "sleep 300"), action="swupdate", timeout=0.5)

    helper = int(pidfile.read_text())
    await wait_for(lambda: not alive(helper), "the helper to end")


async def test_a_cancelled_caller_kills_the_command_and_its_helpers(tmp_path: Path) -> None:
    pidfile = tmp_path / "helper.pid"
    task = asyncio.create_task(
        run_command(helper_script(pidfile, "sleep 300"), action="rauc install", timeout=300)
    )
    await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the helper")
    helper = int(pidfile.read_text())

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await wait_for(lambda: not alive(helper), "the helper to end")


async def test_a_helper_left_behind_neither_hangs_the_call_nor_survives(tmp_path: Path) -> None:
    pidfile = tmp_path / "helper.pid"

    # The helper holds stdout open for 300 s; the call must end when the command does.
    result = await asyncio.wait_for(
        run_command(helper_script(pidfile, "echo done"), action="x", timeout=300), DEADLINE
    )

    assert result.returncode == 0
    assert result.stdout == "done\n"
    helper = int(pidfile.read_text())
    await wait_for(lambda: not alive(helper), "the helper to end")


async def test_stdout_comes_line_by_line_while_the_command_runs(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    lines: list[str] = []
    # The second line is printed only after the test saw the first: nothing is held back.
    script = f'echo " 10% first"; while [ ! -e "{gate}" ]; do sleep 0.01; done; printf last'
    task = asyncio.create_task(
        run_command(["sh", "-c", script], action="x", timeout=60, on_line=lines.append)
    )
    await wait_for(lambda: lines == [" 10% first"], "the first line")
    gate.touch()
    result = await task

    assert lines == [" 10% first", "last"]
    assert result.stdout == " 10% first\nlast"


async def test_the_command_gets_a_small_environment_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-the-updater")

    result = await run_command(
        ["env"], action="x", timeout=60, env={"TMPDIR": "/var/lib/jobs-agent/swupdate"}
    )

    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["LC_ALL"] == "C"
    assert env["TMPDIR"] == "/var/lib/jobs-agent/swupdate"
    assert env["PATH"] == os.environ["PATH"]


async def test_a_failure_carries_the_last_words_of_the_command() -> None:
    result = await run_command(
        ["sh", "-c", "echo progress; echo noise >&2; echo 'Verify error: bad' >&2; exit 3"],
        action="rauc install",
        timeout=60,
    )

    error = result.failure()
    assert result.returncode == 3
    assert str(error) == "rauc install: exited with code 3: Verify error: bad"
    assert "progress" in error.output and "noise" in error.output


async def test_a_missing_updater_is_a_clear_error() -> None:
    with pytest.raises(UpdaterError, match=r"^rauc status: cannot run /nonexistent/rauc: "):
        await run_command(["/nonexistent/rauc", "status"], action="rauc status", timeout=5)


async def test_output_without_line_breaks_is_passed_on_in_bounded_pieces() -> None:
    lines: list[str] = []

    result = await run_command(
        ["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x"],
        action="x",
        timeout=60,
        on_line=lines.append,
    )

    assert result.returncode == 0
    assert "".join(lines) == "x" * 300000
    assert max(map(len, lines)) <= 2 * LINE_MAX
