"""The process sandbox every external handler runs in: runHandler, runCommand, scripts.

What it guarantees, whatever the handler does:
* no shell: argv goes to exec as given, so job input is never parsed as shell syntax;
* a new session, so the handler and everything it starts form one process group that can be
  signalled as a whole (SIGTERM, then SIGKILL after the grace period), including grandchildren;
* a minimal, explicit environment: nothing of the agent's own environment leaks into a job;
* a time limit on every run (never infinite), and prompt termination when the job is cancelled;
* stdout and stderr drained concurrently and without limit, so a chatty handler is never blocked
  or killed for its output; only a bounded tail is kept in memory, the rest goes to a capped log;
* an optional progress pipe whose JSON lines are passed to a callback (the script protocol).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs_agent.dispatch.output import OutputLog, Tail
from jobs_agent.dispatch.shebang import interpreter_problem
from jobs_agent.dispatch.users import RunAs

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PROGRESS_LINE_MAX = 64 * 1024
_READ_CHUNK = 64 * 1024
_POLL_INTERVAL = 0.05

PROGRESS_FD = 3
"""The progress pipe's number in the handler: a single digit, so `>&3` works in any sh."""


def _progress_fd_setup(write_fd: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: put the progress pipe on fd 3.

    subprocess would keep a passed fd at its own number, which in a busy agent is above 9,
    where dash cannot redirect to it. Only os.dup2/os.close run here (async-signal-safe
    system calls), and `close_fds` is off because it would close the new fd 3: every fd the
    agent opens is close-on-exec (PEP 446), so nothing else reaches the handler.
    """

    def setup() -> None:
        if write_fd == PROGRESS_FD:
            os.set_inheritable(write_fd, True)
        else:
            os.dup2(write_fd, PROGRESS_FD)
            os.close(write_fd)

    return setup


MessageCallback = Callable[[Any], Awaitable[None]]
BadLineCallback = Callable[[str], None]
"""Told why a progress line was ignored (not JSON, too long), so the operator can be warned."""


@dataclass(frozen=True)
class ProcessSpec:
    """One process to run: argv (argv[0] is the executable), as whom, with which extra env."""

    argv: tuple[str, ...]
    user: RunAs
    timeout: float
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass
class ProcessResult:
    """How a process ended and what it printed."""

    returncode: int | None
    timeout: float
    stdout: Tail
    stderr: Tail
    timed_out: bool = False
    cancelled: bool = False
    spawn_error: str | None = None

    @property
    def signal(self) -> int | None:
        if self.returncode is not None and self.returncode < 0:
            return -self.returncode
        return None

    @property
    def exit_code(self) -> int | None:
        """The exit status when the process exited by itself, else None."""
        if self.returncode is None or self.returncode < 0 or self.timed_out or self.cancelled:
            return None
        return self.returncode

    def failure(self) -> str | None:
        """Why the run failed, in words an operator reads in statusDetails; None on success."""
        if self.spawn_error is not None:
            return self.spawn_error
        if self.cancelled:
            return "cancelled"
        if self.timed_out:
            return f"timed out after {self.timeout:g} s"
        if self.signal is not None:
            return f"killed by signal {_signal_name(self.signal)}"
        if self.returncode:
            return f"exited with code {self.returncode}"
        return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def build_environment(
    user: RunAs, extra: Mapping[str, str], path: str, site: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The whole environment of a handler: nothing is inherited from the agent except what the
    site configured (`jobs.handler_environment`, e.g. `http_proxy`, `TZ`)."""
    env = {"LANG": "C.UTF-8", **(site or {})}
    env.update({"PATH": path, "HOME": user.home or "/"})
    env.update(extra)
    return env


OutputEcho = Callable[[str, bytes], None]
"""Shown a handler's output as it arrives: ("stdout" | "stderr", bytes) (`exec --verbose`)."""


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and fields[0] != b"Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Sandbox:
    """Runs processes under the guarantees in the module docstring."""

    def __init__(
        self,
        *,
        kill_grace: float,
        search_path: str = DEFAULT_PATH,
        environment: Mapping[str, str] | None = None,
        echo: OutputEcho | None = None,
    ) -> None:
        self.kill_grace = kill_grace
        self.search_path = search_path
        self.environment = dict(environment or {})
        self.echo = echo

    async def run(
        self,
        spec: ProcessSpec,
        *,
        cancelled: asyncio.Event,
        log: OutputLog | None = None,
        on_message: MessageCallback | None = None,
        on_bad_line: BadLineCallback | None = None,
        stdout_sinks: Sequence[Tail] = (),
        stderr_sinks: Sequence[Tail] = (),
    ) -> ProcessResult:
        result = ProcessResult(None, spec.timeout, Tail(), Tail())
        env = build_environment(spec.user, spec.env, self.search_path, self.environment)
        read_fd, write_fd = os.pipe()
        env["JOBS_AGENT_PROGRESS_FD"] = str(PROGRESS_FD)
        kwargs: dict[str, Any] = {}
        if spec.user.switch:
            kwargs.update(
                user=spec.user.uid, group=spec.user.gid, extra_groups=list(spec.user.groups)
            )
        cwd = spec.cwd
        if cwd is None or not cwd.is_dir():
            cwd = Path(spec.user.home) if os.path.isdir(spec.user.home) else Path("/")
        try:
            process = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,
                close_fds=False,
                preexec_fn=_progress_fd_setup(write_fd),
                **kwargs,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in argv or environment
            os.close(read_fd)
            os.close(write_fd)
            reason = exc.strerror if isinstance(exc, OSError) else None
            if isinstance(exc, FileNotFoundError) and os.path.exists(spec.argv[0]):
                # ENOENT for a file that exists: its interpreter is what is missing.
                reason = interpreter_problem(Path(spec.argv[0]), self.search_path) or reason
            result.spawn_error = f"cannot run {spec.argv[0]}: {reason or exc}"
            return result
        finally:
            if not result.spawn_error:
                os.close(write_fd)
        assert process.stdout is not None and process.stderr is not None
        pgid = process.pid
        drains = {
            asyncio.create_task(
                _drain(process.stdout, [result.stdout, *stdout_sinks], log, self._echo("stdout"))
            ),
            asyncio.create_task(
                _drain(process.stderr, [result.stderr, *stderr_sinks], log, self._echo("stderr"))
            ),
        }
        progress = asyncio.create_task(_read_messages(read_fd, on_message, on_bad_line))
        waiter = asyncio.create_task(_wait_exit(process))
        cancel_wait = asyncio.create_task(cancelled.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, cancel_wait}, timeout=spec.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if waiter not in done:
                result.cancelled = cancel_wait in done
                result.timed_out = not result.cancelled
                await self._terminate(pgid, waiter)
            result.returncode = await waiter
            await self._reap_group(pgid, drains)
        finally:
            cancel_wait.cancel()
            if process.returncode is None:
                _killpg(pgid, signal.SIGKILL)
            for task in drains:
                task.cancel()
            waiter.cancel()
            if not progress.done():
                # Give the pipe's remaining lines a moment, then stop reading it.
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(progress), timeout=0.5)
                progress.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(progress, *drains, return_exceptions=True)
        return result

    def _echo(self, stream: str) -> Callable[[bytes], None] | None:
        echo = self.echo
        if echo is None:
            return None
        return lambda chunk: echo(stream, chunk)

    async def _terminate(self, pgid: int, waiter: asyncio.Task[int]) -> None:
        _killpg(pgid, signal.SIGTERM)
        done, _ = await asyncio.wait({waiter}, timeout=self.kill_grace)
        if not done:
            _killpg(pgid, signal.SIGKILL)

    async def _reap_group(self, pgid: int, drains: set[asyncio.Task[None]]) -> None:
        """The handler has exited; end whatever it left behind in its process group.

        Leftovers (a background `sleep &`) would otherwise keep the output pipes open and hang
        the job, or outlive it unnoticed.
        """
        if not _group_members(pgid):
            await asyncio.wait(drains, timeout=self.kill_grace + 1.0)
            return
        _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while _group_members(pgid) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_INTERVAL)
        if _group_members(pgid):
            _killpg(pgid, signal.SIGKILL)
        await asyncio.wait(drains, timeout=1.0)


async def _wait_exit(process: asyncio.subprocess.Process) -> int:
    """The exit status as soon as the process exits.

    `Process.wait()` also waits for the output pipes to close, which a leftover grandchild can
    keep open forever; here the exit itself is what counts (a pidfd where the kernel has them).
    """
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None:
        readable: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(pidfd, on_readable)
        try:
            await readable
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
    # The child watcher reaps the process and sets the status a moment after it exits.
    while process.returncode is None:
        await asyncio.sleep(_POLL_INTERVAL / 5)
    return process.returncode


async def _drain(
    stream: asyncio.StreamReader,
    sinks: list[Tail],
    log: OutputLog | None,
    echo: Callable[[bytes], None] | None = None,
) -> None:
    while True:
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            return
        for sink in sinks:
            sink.feed(chunk)
        if log is not None:
            log.write(chunk)
        if echo is not None:
            echo(chunk)


async def _read_messages(
    fd: int, on_message: MessageCallback | None, on_bad_line: BadLineCallback | None = None
) -> None:
    """Read JSON lines from the progress pipe; malformed or oversized lines are skipped (and
    reported to `on_bad_line`: a handler author must not lose progress without a word)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PROGRESS_LINE_MAX)
    pipe = os.fdopen(fd, "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)

    def bad(problem: str) -> None:
        if on_bad_line is not None:
            on_bad_line(problem)

    try:
        while True:
            try:
                line = await reader.readline()
            except ValueError:
                bad(f"a progress line longer than {PROGRESS_LINE_MAX} bytes was ignored")
                continue
            if not line:
                return
            if on_message is None or not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                excerpt = line.decode("utf-8", "replace").strip()[:120]
                bad(f"a progress line is not JSON and was ignored: {excerpt!r}")
                continue
            await on_message(message)
    finally:
        transport.close()
