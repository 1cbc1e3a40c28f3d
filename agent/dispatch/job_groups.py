"""The processes of one running step, as each containment mechanism finds and stops them
(`containment.py` explains both): made at a job's first step, where choosing the mechanism and
sweeping what an earlier agent left happen at start and need none of this (issue 18)."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from pathlib import Path

from jobs_agent.dispatch.containment import (
    PROC,
    _cgroup_kill,
    _cgroup_members,
    _kill,
    _Proc,
    _read_proc,
    _remove_cgroup,
)

# -- cgroup v2 -----------------------------------------------------------------------------------


class CgroupGroup:
    def __init__(self, path: str | Path) -> None:
        self.name = os.fspath(path)
        """The cgroup's path as text: made, joined and removed by it, with no `Path` per step
        (issue 18); `path` for the rarer looks inside it."""
        try:
            _make_cgroup(self.name)
        except FileExistsError:
            _cgroup_kill(self.path)  # a leftover of an earlier run of this step
        self.join_fd: int | None = os.open(f"{self.name}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC)
        self._removed = False

    @functools.cached_property
    def path(self) -> Path:
        return Path(self.name)

    def adopt(self, pid: int) -> None:
        if self.join_fd is not None:
            os.close(self.join_fd)
            self.join_fd = None

    def members(self) -> list[int]:
        return _cgroup_members(self.path)

    def empty(self) -> bool:
        return self._removed or not _cgroup_populated(self.path)

    def signal(self, sig: int) -> None:
        for pid in self.members():
            _kill(pid, sig)

    def kill(self) -> None:
        _cgroup_kill(self.path)

    def close(self) -> None:
        self.adopt(0)
        _cgroup_kill(self.path)
        _remove_cgroup(self.path)

    def close_if_empty(self) -> bool:
        """One `rmdir`: the kernel refuses it (EBUSY) while a live process or a sub-cgroup
        is left, so its success is the emptiness test too (`Sandbox._reap_group` asks this
        first, where reading `populated` from cgroup.events cost an open, a read and a close
        per step: issue 18). A removed cgroup cannot be joined again; asked twice, the
        second answer costs nothing."""
        self.adopt(0)
        if self._removed:
            return True
        try:
            os.rmdir(self.name)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        self._removed = True
        return True


def _make_cgroup(path: str) -> None:
    """Make a step's cgroup: one `mkdir`. The agent's base above it stays between steps (an
    empty cgroup holds nothing: the sweep at the next start removes it); it is made again
    only when it is missing (the first step, or after that sweep). Making and removing the
    base around every step was a `mkdir` and an `rmdir` in cgroupfs per script job (issue
    18)."""
    try:
        os.mkdir(path, 0o755)
    except FileNotFoundError:
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.dirname(path), 0o755)
        os.mkdir(path, 0o755)


def _cgroup_populated(path: Path) -> bool:
    """Whether any live process is in the cgroup or below it: `populated` of cgroup.events,
    one read where listing the members walks the subtree."""
    try:
        fd = os.open(f"{path}/cgroup.events", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return bool(_cgroup_members(path))
    try:
        events = os.read(fd, 4096)
    except OSError:
        return bool(_cgroup_members(path))
    finally:
        os.close(fd)
    for line in events.splitlines():
        if line.startswith(b"populated "):
            return line != b"populated 0"
    return bool(_cgroup_members(path))


# -- subreaper -----------------------------------------------------------------------------------


class SubreaperGroup:
    """A step's processes as seen by a subreaper agent (see the module docstring)."""

    def __init__(self) -> None:
        self.pgid = 0
        self.join_fd: int | None = None
        self.started = _boot_ticks_now()

    def adopt(self, pid: int) -> None:
        self.pgid = pid

    def _tree(self) -> list[_Proc]:
        me = os.getpid()
        processes = _all_processes()
        roots = {
            p.pid
            for p in processes
            if (self.pgid and p.pgrp == self.pgid)
            or (p.ppid == me and p.pid != self.pgid and p.start >= self.started)
        }
        children: dict[int, list[_Proc]] = {}
        for proc in processes:
            children.setdefault(proc.ppid, []).append(proc)
        by_pid = {p.pid: p for p in processes}
        found: dict[int, _Proc] = {}
        stack = [by_pid[pid] for pid in roots if pid in by_pid]
        while stack:
            proc = stack.pop()
            if proc.pid in found or proc.pid == me:
                continue
            found[proc.pid] = proc
            stack.extend(children.get(proc.pid, []))
        return list(found.values())

    def members(self) -> list[int]:
        return [p.pid for p in self._tree() if not p.zombie]

    def empty(self) -> bool:
        return self._nothing_left() or not self.members()

    def _nothing_left(self) -> bool:
        """The usual end of a step in two system calls. Every process of the step descends
        from the handler; once it has exited, whatever is left is in its process group or was
        re-parented to the agent (the subreaper). Nothing in the group and no child of the
        agent at all (no zombie to reap either): nothing is left. False means "look closer"."""
        if self.pgid:
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                pass
            except OSError:
                return False
            else:
                return False  # zombies answer too
        try:
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return True
        return False

    def signal(self, sig: int) -> None:
        for pid in self.members():
            _kill(pid, sig)

    def kill(self) -> None:
        for _ in range(100):
            members = self.members()
            if not members:
                break
            for pid in members:
                _kill(pid, signal.SIGSTOP)  # stopped processes cannot fork meanwhile
            for pid in members:
                _kill(pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        """Collect the exit status of orphans re-parented to the agent (nobody else waits for
        them); the handler itself is reaped by the sandbox (`pipes.ExitWatch`)."""
        me = os.getpid()
        for proc in self._tree():
            if proc.ppid == me and proc.pid != self.pgid and proc.zombie:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(proc.pid, os.WNOHANG)

    def close(self) -> None:
        self.kill()

    def close_if_empty(self) -> bool:
        return self._nothing_left()


def _all_processes() -> list[_Proc]:
    found = []
    try:
        entries = os.listdir(PROC)
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit() and (proc := _read_proc(int(entry))) is not None:
            found.append(proc)
    return found


def _boot_ticks_now() -> int:
    """Now, in the clock ticks since boot that /proc/PID/stat start times use."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))
