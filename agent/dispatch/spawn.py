"""How a step's process is started: two paths to the same guarantees (`process`).

* `start_chained`, for scripts: no `preexec_fn`, so CPython vforks, and the child's part is done
  by the constant bash chain of `launcher` (join the cgroup, place the pipes, check the script,
  setpriv as the last link);
* `start_forked`, for binaries and wherever the chain cannot serve: `preexec_fn` does the
  same in the forked child (`_child_setup`).
"""

from __future__ import annotations

import fcntl
import os
import resource
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from jobs_agent.datamodel import model
from jobs_agent.dispatch.launcher import LOWEST_PASSED_FD, Launcher
from jobs_agent.dispatch.users import RunAs
from jobs_agent.securefs import CheckedExecutable

PROGRESS_FD = 3
"""The progress pipe's number in the handler: a single digit, so `>&3` works in any sh."""
REPLY_FD = 4
"""The reply pipe's number in a step that has one (`<&4` in sh)."""


_devnull_fd: int | None = None


def devnull() -> int:
    """The agent's one `/dev/null` descriptor (close-on-exec), every step's stdin: CPython's
    `DEVNULL` opens and closes the file for every spawn (issue 18). What the step gets is the
    same as before, a copy of it on fd 0; the descriptor itself never reaches a step."""
    global _devnull_fd
    if _devnull_fd is None:
        _devnull_fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    return _devnull_fd


def _close_inherited_fds(highest_kept: int) -> None:
    """In the child: close every inheritable descriptor above the protocol's own (3, or 4).

    Descriptors marked close-on-exec (everything Python opens, PEP 446, including subprocess's
    own error pipe that must stay open until the exec) go away by themselves; what is left is
    what a library opened without the flag (awscrt's sockets and epoll instance).
    """
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(highest_kept + 1, _fd_limit())]
    for name in names:
        fd = int(name)
        if fd <= highest_kept:
            continue
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            continue  # the listing's own descriptor, already closed
        if not flags & fcntl.FD_CLOEXEC:
            os.close(fd)


def _fd_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return min(soft, 65536) if soft > 0 else 1024


def _child_setup(
    write_fd: int,
    reply_fd: int | None,
    join_fd: int | None,
    user: RunAs,
    executable: CheckedExecutable,
) -> Callable[[], None]:
    """Runs in the child between fork and exec (after subprocess set up stdio and the session).

    In this order: join the step's cgroup (as root, before anything else can fork), put the
    progress pipe on fd 3 (a single digit, so `>&3` works in any sh) and the reply pipe, if
    any, on fd 4, close what the agent let leak, drop to the step's user (supplementary
    groups, gid, uid: all three ids), and for a script check that its name still refers to the
    file checked before. Only system calls run here; an exception is reported by subprocess
    as a failed start.
    """

    def setup() -> None:
        if join_fd is not None:
            os.write(join_fd, b"0")
        reply = reply_fd
        if reply == PROGRESS_FD:
            reply = os.dup(reply)  # out of the progress pipe's way (close-on-exec is not copied)
        _place(write_fd, PROGRESS_FD)
        if reply is not None:
            _place(reply, REPLY_FD)
        _close_inherited_fds(PROGRESS_FD if reply is None else REPLY_FD)
        if user.switch:
            os.setgroups(list(user.groups))
            os.setresgid(user.gid, user.gid, user.gid)
            os.setresuid(user.uid, user.uid, user.uid)
        if executable.by_name and not executable.same_file():
            raise RuntimeError("the executable changed after it was checked")

    return setup


def passable(fd: int, *, own: bool = True) -> int:
    """`fd`, or a close-on-exec copy of it numbered at least `LOWEST_PASSED_FD` (the chain
    places pipes on 3 and 4 and must not overwrite a descriptor it still has to read);
    with `own`, the original is closed."""
    if fd >= LOWEST_PASSED_FD:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, LOWEST_PASSED_FD)
    if own:
        os.close(fd)
    return moved


def _place(fd: int, number: int) -> None:
    """In the child: make `fd` available to the exec'd program as `number`."""
    if fd == number:
        os.set_inheritable(fd, True)
    else:
        os.dup2(fd, number)  # dup2 clears close-on-exec on the copy


@model(slots=True)
class Child:
    """What a step's process gets: argv, user, environment, directory, the checked executable,
    the cgroup.procs descriptor to join (or None), and its pipes' ends (the reply pipe's read
    end only for a step that has one)."""

    argv: Sequence[str]
    user: RunAs
    env: Mapping[str, str]
    cwd: Path | str
    executable: CheckedExecutable
    join_fd: int | None
    stdout: int
    stderr: int
    progress: int
    reply: int | None


def start_forked(child: Child) -> subprocess.Popen[bytes]:
    """Fork, and do the child's part in `preexec_fn`."""
    return subprocess.Popen(
        child.argv,
        executable=child.executable.exec_path,
        stdin=devnull(),
        stdout=child.stdout,
        stderr=child.stderr,
        env=child.env,
        cwd=child.cwd,
        start_new_session=True,
        close_fds=False,
        preexec_fn=_child_setup(
            child.progress, child.reply, child.join_fd, child.user, child.executable
        ),
    )


def start_chained(launcher: Launcher, child: Child) -> subprocess.Popen[bytes]:
    """Start a script through the chain (`launcher`): no `preexec_fn` and no user switch asked
    of Popen, so CPython vforks; the child closes every descriptor but stdio and `pass_fds`
    before it executes bash. The progress and reply ends must be `passable` already."""
    executable = child.executable
    join_fd = None if child.join_fd is None else passable(child.join_fd, own=False)
    passed = [child.progress, executable.fd]
    if child.reply is not None:
        passed.append(child.reply)
    if join_fd is not None:
        passed.append(join_fd)
    env, own, constants = launcher.environment(child.env)
    argv = launcher.argv(
        [executable.name, *child.argv[1:]],
        child.user,
        join_fd=join_fd,
        progress_fd=child.progress,
        reply_fd=child.reply,
        checked_fd=executable.fd,
        script=executable.name,
        own=own,
        constants=constants,
    )
    try:
        return subprocess.Popen(
            argv,
            stdin=devnull(),
            stdout=child.stdout,
            stderr=child.stderr,
            env=env,
            cwd=child.cwd,
            start_new_session=True,
            close_fds=True,
            pass_fds=passed,
        )
    finally:
        if join_fd is not None and join_fd != child.join_fd:
            os.close(join_fd)
