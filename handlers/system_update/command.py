"""Run one updater command: no shell, a time limit, and nothing left behind.

The updaters run as root and write to block devices, so every call is an argv list (a bundle
path is never parsed by a shell), gets a small explicit environment (the agent's own variables
do not leak in; `LC_ALL=C` keeps the messages parsed here in English) and a new session, so that
the command and whatever it started (SWUpdate forks helpers) are killed as one process group on
timeout or cancellation, and any helper left over after a normal exit is ended too.

stdout is handed over line by line as it comes (the updaters print their progress there) and
kept whole up to a cap (`rauc status` prints JSON); of stderr only the tail is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar

from jobs_agent.datamodel import model
from jobs_agent_handlers.system_update.updater import OUTPUT_TAIL_CHARS, UpdaterError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
STDOUT_MAX = 1024 * 1024
LINE_MAX = 64 * 1024
PIPES_CLOSE_TIMEOUT = 5.0

LineCallback = Callable[[str], None]

JOB_ENVIRONMENT: ContextVar[Mapping[str, str] | None] = ContextVar(
    "updater_job_environment", default=None
)
"""Variables every command run for the current job carries (the `system-update` handler sets
the job's `JOBS_AGENT_THING_NAME`, `JOBS_AGENT_JOB_ID`, `JOBS_AGENT_EXECUTION_NUMBER`): a
command left running by an agent killed mid-call (a `swupdate -i` writing the slot) is then
recognised and stopped by the restarted agent before the job goes on."""


@model
class CommandResult:
    action: str
    returncode: int
    stdout: str
    stderr: str
    """The last `OUTPUT_TAIL_CHARS` characters of stderr."""

    def failure(self, detail: str = "") -> UpdaterError:
        """The error for a non-zero exit; `detail` defaults to the last line of stderr."""
        if not detail:
            lines = self.stderr.strip().splitlines()
            detail = lines[-1].strip() if lines else ""
        output = "\n".join(part for part in (self.stdout[-OUTPUT_TAIL_CHARS:], self.stderr) if part)
        return UpdaterError(self.action, f"exited with code {self.returncode}", detail, output)


class _Protocol(asyncio.SubprocessProtocol):
    """Collects the output and signals the exit itself, which comes before the pipes close
    when a helper of the command still holds them."""

    def __init__(self, on_line: LineCallback | None) -> None:
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.stdout = bytearray()
        self.stderr = bytearray()
        self._partial = bytearray()
        self._on_line = on_line

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self.stderr += data
            del self.stderr[: -4 * OUTPUT_TAIL_CHARS]
            return
        if len(self.stdout) < STDOUT_MAX:
            self.stdout += data[: STDOUT_MAX - len(self.stdout)]
        self._partial += data
        *lines, rest = self._partial.split(b"\n")
        self._partial = bytearray(rest)
        if len(self._partial) > LINE_MAX:  # no line break for that long: pass it on in pieces
            lines.append(self._partial)
            self._partial = bytearray()
        for line in lines:
            self._line(bytes(line))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self._partial:
            self._line(bytes(self._partial))
            self._partial.clear()

    def _line(self, line: bytes) -> None:
        if self._on_line is not None:
            self._on_line(line.decode("utf-8", "replace").rstrip("\r"))

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def run_command(
    argv: Sequence[str],
    *,
    action: str,
    timeout: float,
    env: Mapping[str, str] | None = None,
    on_line: LineCallback | None = None,
) -> CommandResult:
    """Run `argv` to its end and return how it ended; a non-zero exit is the caller's to judge.

    Raises `UpdaterError` when the command cannot be started or runs longer than `timeout`
    seconds (it is killed then). A cancelled caller kills it too, before the cancellation goes on.
    """
    environment = {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "LC_ALL": "C"}
    environment.update(JOB_ENVIRONMENT.get() or {})
    environment.update(env or {})
    loop = asyncio.get_running_loop()
    starting = asyncio.ensure_future(
        loop.subprocess_exec(
            lambda: _Protocol(on_line),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            start_new_session=True,
        )
    )
    try:
        transport, protocol = await asyncio.shield(starting)
    except OSError as exc:
        raise UpdaterError(action, f"cannot run {argv[0]}", exc.strerror or str(exc)) from exc
    except asyncio.CancelledError:
        # The command may already run (and have forked helpers) while its pipes are still being
        # connected: asyncio would kill only the command itself, so let the start finish and
        # end the whole group.
        with contextlib.suppress(Exception):
            started, _ = await starting
            _kill_group(started.get_pid())
            started.close()
        raise
    pgid = transport.get_pid()
    timed_out = False
    try:
        try:
            await asyncio.wait_for(asyncio.shield(protocol.exited), timeout)
        except TimeoutError:
            timed_out = True
            _kill_group(pgid)
            await protocol.exited
    except asyncio.CancelledError:
        _kill_group(pgid)
        transport.close()
        raise
    # Helpers the command left running would hold the pipes open; they end with it.
    _kill_group(pgid)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(protocol.closed), PIPES_CLOSE_TIMEOUT)
    returncode = transport.get_returncode()
    transport.close()
    result = CommandResult(
        action,
        -1 if returncode is None else returncode,
        protocol.stdout.decode("utf-8", "replace"),
        protocol.stderr.decode("utf-8", "replace")[-OUTPUT_TAIL_CHARS:],
    )
    if timed_out:
        raise UpdaterError(
            action, f"timed out after {timeout:g} s", output=result.stdout + result.stderr
        )
    return result
