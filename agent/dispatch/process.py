"""The process sandbox every external handler runs in: runHandler, runCommand, scripts.

What it guarantees, whatever the handler does:
* no shell: argv goes to exec as given, so job input is never parsed as shell syntax;
* the executable is checked again, by descriptor, right before it runs: it and every directory
  above it can be changed only by root or the agent (`agent.securefs`); a binary is executed
  through that very descriptor, a script by its (unchangeable) name after a last identity check
  (how the process starts, with or without `preexec_fn`: `spawn`, `launcher`);
* exactly four descriptors: stdin (/dev/null), stdout, stderr and the progress pipe (fd 3),
  and a fifth only for a step that has presigned URLs to renew: the read end of its reply pipe
  (fd 4, `ReplyPipe`: the agent's one-line answers to its requests); nothing the agent has
  open (an MQTT socket of a transport that does not mark its descriptors close-on-exec, an
  epoll instance) reaches a handler, whatever user it runs as;
* containment: the handler and every process it starts, including those that leave its session,
  are found and stopped at the step's end, timeout or cancellation (`containment`: a cgroup per
  step, or the agent as child subreaper);
* a minimal, explicit environment: nothing of the agent's own environment leaks into a job;
* a time limit on every run (never infinite), and prompt termination when the job is cancelled;
* stdout and stderr drained concurrently and without limit, so a chatty handler is never blocked
  or killed for its output; only a bounded tail is kept in memory, the rest goes to a capped log;
* an optional progress pipe whose JSON lines are passed to a callback (the script protocol),
  and the reply pipe on which that callback answers a request (`{"refreshUrls": true}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path

from jobs_agent.datamodel import model
from jobs_agent.dispatch.cancellation import woken_by
from jobs_agent.dispatch.containment import (
    Containment,
    ContainmentError,
    JobGroup,
    containment_for,
)
from jobs_agent.dispatch.launcher import (
    EXIT_LAUNCH_FAILED,
    FAILURE_PREFIX,
    Launcher,
    launcher_for,
)
from jobs_agent.dispatch.output import OutputLog, Tail
from jobs_agent.dispatch.pipes import (
    BadLineCallback,
    ExitWatch,
    MessageCallback,
    OutputReader,
    ProgressReader,
    ReplyPipe,
    step_poll,
)
from jobs_agent.dispatch.shebang import interpreter_problem
from jobs_agent.dispatch.spawn import (
    PROGRESS_FD,
    REPLY_FD,
    Child,
    passable,
    start_chained,
    start_forked,
)
from jobs_agent.dispatch.time_limit import StepLimit, time_limits
from jobs_agent.dispatch.users import RunAs
from jobs_agent.securefs import CheckedExecutable, UntrustedPath, open_executable

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_POLL_INTERVAL = 0.05
EXEC_FAILED = (126, 127)
"""Exit codes of bash or `setpriv` whose exec was refused (not executable, not found)."""
_PROGRESS_GRACE = 0.5
"""After the handler and its group have ended: how long the progress pipe's last lines may take."""

"""Told why a progress line was ignored (not JSON, too long), so the operator can be warned."""


@model
class ProcessSpec:
    """One process to run: argv (argv[0] is the executable), as whom, with which extra env."""

    argv: tuple[str, ...]
    user: RunAs
    timeout: float
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | str | None = None
    group: str | None = None
    """Containment group (`containment.group_name`): an execution's steps share its name."""


@model(frozen=False)
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


_anonymous_groups = itertools.count(1)


class Sandbox:
    """Runs processes under the guarantees in the module docstring."""

    def __init__(
        self,
        *,
        kill_grace: float,
        search_path: str = DEFAULT_PATH,
        environment: Mapping[str, str] | None = None,
        echo: OutputEcho | None = None,
        containment: str = "auto",
        state_dir: Path = Path("/var/lib/jobs-agent"),
    ) -> None:
        self.kill_grace = kill_grace
        self.search_path = search_path
        self.environment = dict(environment or {})
        self.echo = echo
        self.containment_mode = containment
        self.state_dir = state_dir

    @property
    def containment(self) -> Containment:
        """Set up on first use (a process-wide choice, see `containment.containment_for`)."""
        return containment_for(self.containment_mode, self.state_dir)

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
        replies: ReplyPipe | None = None,
    ) -> ProcessResult:
        """Run `spec` to its end. With `replies`, the step also gets the reply pipe on fd 4
        (`JOBS_AGENT_REPLY_FD`), whose write end `replies` holds while the step runs, for
        `on_message` to answer its requests."""
        result = ProcessResult(None, spec.timeout, Tail(), Tail())
        env = build_environment(spec.user, spec.env, self.search_path, self.environment)
        env["JOBS_AGENT_PROGRESS_FD"] = str(PROGRESS_FD)
        if replies is not None:
            env["JOBS_AGENT_REPLY_FD"] = str(REPLY_FD)
        program = spec.argv[0]
        try:
            executable = open_executable(program, what="handler")  # no `Path` per job
        except UntrustedPath as exc:
            result.spawn_error = f"cannot run {program}: {exc.reason}"
            return result
        except OSError as exc:
            result.spawn_error = f"cannot run {program}: {exc.strerror or exc}"
            return result
        if executable.fd <= REPLY_FD:
            # Executed as /proc/self/fd/N: N must not be where the child puts its pipes.
            moved = fcntl.fcntl(executable.fd, fcntl.F_DUPFD_CLOEXEC, REPLY_FD + 1)
            os.close(executable.fd)
            executable.fd = moved
        try:
            # A few system calls (mkdir, open): on the loop, as the spawn itself.
            group = self.containment.group(spec.group or _anonymous_group())
        except ContainmentError as exc:
            executable.close()
            result.spawn_error = f"cannot run {program}: {exc}"
            return result
        try:
            await self._run_in_group(
                spec, env, executable, group, result, cancelled,
                _Outputs(log, on_message, on_bad_line, stdout_sinks, stderr_sinks, replies),
            )  # fmt: skip
            if self._chain_for(spec, executable) is not None:
                self._chain_failure(result, program, executable)
            return result
        finally:
            executable.close()
            if not group.close_if_empty():
                await asyncio.shield(asyncio.to_thread(group.close))

    async def _run_in_group(
        self,
        spec: ProcessSpec,
        env: dict[str, str],
        executable: CheckedExecutable,
        group: JobGroup,
        result: ProcessResult,
        cancelled: asyncio.Event,
        outputs: _Outputs,
    ) -> ProcessResult:
        spawned = self._spawn(spec, env, executable, group, result, outputs.replies)
        if spawned is None:
            return result
        process, (out_fd, err_fd, progress_fd) = spawned
        group.adopt(process.pid)
        log = outputs.log
        woken, cancel_wait = woken_by(cancelled)
        poll = step_poll(woken.get_loop())  # the loop's one watch of the steps' descriptors
        readers = [
            OutputReader(out_fd, [result.stdout, *outputs.stdout], log, self._echo("stdout"), poll),
            OutputReader(err_fd, [result.stderr, *outputs.stderr], log, self._echo("stderr"), poll),
        ]
        progress = ProgressReader(progress_fd, outputs.on_message, outputs.on_bad_line, poll)
        exit_watch = ExitWatch(process, woken, poll)
        limits = time_limits(woken.get_loop())  # the loop's one timer (time_limit)
        limit = StepLimit(woken, spec.timeout)
        limits.start(limit)
        try:
            await woken  # the exit, the job's cancellation or the limit
            if not exit_watch.status.done():
                result.cancelled = cancelled.is_set()
                result.timed_out = not result.cancelled
                await self._terminate(group, exit_watch.status, process.pid)
            result.returncode = await exit_watch.status
            await self._reap_group(group, [reader.pipe.closed for reader in readers])
            await progress.finish(_PROGRESS_GRACE)
        finally:
            limits.end(limit)
            woken.cancel()
            if cancel_wait is not None:
                cancel_wait.cancel()
            if process.returncode is None:
                _signal_leader(process.pid, exit_watch.status, signal.SIGKILL)
                group.kill()
            exit_watch.close()
            for reader in readers:
                reader.pipe.close()
            progress.cancel()  # each unwatched its descriptor before closing it
            await progress.wait_cancelled()
            if outputs.replies is not None:
                outputs.replies.close()
        return result

    def _spawn(
        self,
        spec: ProcessSpec,
        env: dict[str, str],
        executable: CheckedExecutable,
        group: JobGroup,
        result: ProcessResult,
        replies: ReplyPipe | None,
    ) -> tuple[subprocess.Popen[bytes], tuple[int, int, int]] | None:
        """Start the step in its group, as its user, from the file that was checked; the
        process and the read ends of its stdout, stderr and progress pipe, or None
        (`result.spawn_error` says). With `replies`, the write end of the reply pipe goes to
        it and the read end to the step.

        Synchronous, on the loop (as asyncio's own subprocess start): the child runs nothing
        but system calls before its exec, and no watcher thread is started for it.

        A script's name is compared with the checked file by the child just before its exec
        (`LAUNCH`'s `-ef`, `_child_setup`): a `stat` here could only be earlier (issue 18).
        """
        cwd = spec.cwd
        if cwd is None or not os.path.isdir(cwd):
            cwd = Path(spec.user.home) if os.path.isdir(spec.user.home) else Path("/")
        launcher = self._chain_for(spec, executable)
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, progress (close-on-exec)
        reply = os.pipe() if replies is not None else None
        if launcher is not None:
            pipes[2] = (pipes[2][0], passable(pipes[2][1]))
            if reply is not None:
                reply = (passable(reply[0]), reply[1])
        child = Child(
            spec.argv, spec.user, env, cwd, executable, group.join_fd,
            pipes[0][1], pipes[1][1], pipes[2][1], None if reply is None else reply[0],
        )  # fmt: skip
        try:
            if launcher is not None:
                process = start_chained(launcher, child)
            else:
                process = start_forked(child)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            for read_fd, _write_fd in pipes:
                os.close(read_fd)
            if reply is not None:
                os.close(reply[1])
            result.spawn_error = f"cannot run {spec.argv[0]}: {self._spawn_failure(spec, exc)}"
            return None
        finally:
            for _read_fd, write_fd in pipes:
                os.close(write_fd)
            if reply is not None:
                os.close(reply[0])
        if replies is not None and reply is not None:
            replies.attach(reply[1])
        return process, (pipes[0][0], pipes[1][0], pipes[2][0])

    def _chain_failure(
        self, result: ProcessResult, program: str, executable: CheckedExecutable
    ) -> None:
        """A chained script that did not start, said as a failed start: the chain's refusal
        (`EXIT_LAUNCH_FAILED`) by its stderr line; an exec refused (126, 127) by the `#!`
        line, read through the checked descriptor, as the fork path does (`_spawn_failure`).
        The line was checked with the job's document: looked at again only when the exec
        failed, not before every spawn (a `stat` and an `access` per script job: issue 18).
        A script that ran and exited 126 or 127 itself keeps its code: its interpreter is
        there."""
        code = result.returncode
        if code == EXIT_LAUNCH_FAILED:
            said = result.stderr.text()
            if said.startswith(FAILURE_PREFIX):
                reason = said[len(FAILURE_PREFIX) :].split("\n", 1)[0]
                result.spawn_error = f"cannot run {program}: {reason}"
        elif code in EXEC_FAILED and not (result.timed_out or result.cancelled):
            problem = interpreter_problem(executable.path, self.search_path, executable.head)
            if problem is not None:
                result.spawn_error = f"cannot run {program}: {problem}"

    @property
    def launcher(self) -> Launcher | None:
        """The chain that starts scripts without `preexec_fn` (`launcher`), if usable here;
        asked for scripts only (binaries never take it), so it is looked up and logged once,
        at the first script."""
        return launcher_for(self.search_path)

    def _chain_for(self, spec: ProcessSpec, executable: CheckedExecutable) -> Launcher | None:
        """The chain starting this step; None: forked (a binary, or no `setpriv` to switch)."""
        launcher = self.launcher if executable.by_name else None
        served = launcher is not None and launcher.serves(spec.user, executable.by_name)
        return launcher if served else None

    def _spawn_failure(self, spec: ProcessSpec, exc: Exception) -> str:
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            if isinstance(exc, FileNotFoundError) and os.path.exists(spec.argv[0]):
                # ENOENT for a file that exists: its interpreter is what is missing.
                reason = interpreter_problem(Path(spec.argv[0]), self.search_path) or reason
            return reason
        if isinstance(exc, ValueError):  # a NUL byte in argv or environment
            return str(exc)
        return (
            f"preparing the process failed (joining its {self.containment.kind} group,"
            f" switching to user {spec.user.name}, or the file changed after it was checked)"
        )

    def _echo(self, stream: str) -> Callable[[bytes], None] | None:
        echo = self.echo
        if echo is None:
            return None
        return lambda chunk: echo(stream, chunk)

    async def _terminate(self, group: JobGroup, exited: asyncio.Future[int], leader: int) -> None:
        """Timeout or cancellation: SIGTERM to every process of the step, SIGKILL after the
        grace period to whatever is left. The leader is signalled by itself as well: a
        script's chain (`launcher`) runs before it has joined the step's cgroup, and is then
        the step's only process."""
        _signal_leader(leader, exited, signal.SIGTERM)
        group.signal(signal.SIGTERM)
        done, _ = await asyncio.wait({exited}, timeout=self.kill_grace)
        if not done:
            _signal_leader(leader, exited, signal.SIGKILL)
            group.kill()

    async def _reap_group(self, group: JobGroup, outputs: list[asyncio.Future[None]]) -> None:
        """The handler has exited; end whatever it left behind (in its session or not).

        Leftovers (a background `sleep &`, a daemon that called setsid) would otherwise keep
        the output pipes open and hang the job, or outlive it unnoticed. The usual end is an
        empty group, released at once by the same look (`close_if_empty`); only a group it
        cannot release is looked at closer (`empty`).
        """
        if group.close_if_empty() or group.empty():
            if not all(output.done() for output in outputs):  # usually they ended with it
                await asyncio.wait(outputs, timeout=self.kill_grace + 1.0)
            return
        group.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.kill_grace
        while not group.empty() and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_INTERVAL)
        if not group.empty():
            group.kill()
        await asyncio.wait(outputs, timeout=1.0)


@model(slots=True)
class _Outputs:
    """Where a run's output and progress go."""

    log: OutputLog | None
    on_message: MessageCallback | None
    on_bad_line: BadLineCallback | None
    stdout: Sequence[Tail]
    stderr: Sequence[Tail]
    replies: ReplyPipe | None = None


def _signal_leader(pid: int, exited: asyncio.Future[int], sig: int) -> None:
    """Signal the step's first process while it is not reaped (until then its pid is ours)."""
    if not exited.done():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _anonymous_group() -> str:
    return f"run.{os.getpid()}.{next(_anonymous_groups)}"
