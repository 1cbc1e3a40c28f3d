"""Every process a job starts stays findable, so that all of them can be stopped.

A handler runs in its own session, but any of its processes can leave the session (`setsid`, a
double fork, a daemon): a process group alone lets such a process outlive the job's end, its
timeout and the sweep after an agent restart. Two mechanisms, chosen once per agent
(`jobs.containment`, default `auto`: the first that works here):

* **cgroup**: every step runs in a cgroup v2 of its own below the agent's
  (`<agent's cgroup>/jobs-agent.<id>/<namespace>.<jobId>.<executionNumber>`). The kernel keeps
  every descendant in it whatever it does (leaving takes a root process writing to another
  cgroup's `cgroup.procs`: root handlers are trusted). The child joins its cgroup before it
  executes the handler, so nothing runs outside it even for a moment. Stopping: SIGTERM to every
  member, `cgroup.kill` after the grace. After a restart the sweep empties the execution's cgroup.
  Under systemd this needs `Delegate=yes` (the shipped unit has it); elsewhere a writable cgroup
  v2 hierarchy (root, or a delegated subtree).
* **subreaper**: without a usable cgroup v2, the agent marks itself a child subreaper
  (`PR_SET_CHILD_SUBREAPER`): a process whose parent dies is re-parented to the agent instead of
  init, so the step's processes are its process group plus every child of the agent started
  since the step began (the orphans re-parented to it; the agent starts nothing else while a
  step runs), with all their descendants. The limit: after an agent crash the orphans
  go to init, and the restarted agent finds them only by the `JOBS_AGENT_*` environment they
  inherited (see `agent.engine.orphans`); a process that both left the session and replaced its
  environment escapes that sweep. Only cgroup containment has no such gap.

This module chooses the mechanism, reads /proc and holds the stop rules both share, sweeps
what an earlier agent left (at start), and removes the agent's empty cgroup base when it ends
(`release`); the groups of a running step, which only a job needs, are in `job_groups` beside
it (issue 18): the boundary is audited in these two.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import importlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import structlog

from jobs_agent.datamodel import model

if TYPE_CHECKING:
    from jobs_agent.dispatch.job_groups import CgroupGroup, SubreaperGroup

log = structlog.get_logger("jobs_agent.dispatch.containment")

CONTAINMENT_MODES = ("auto", "cgroup", "subreaper")
_PR_SET_CHILD_SUBREAPER = 36
_GROUP_NAME = re.compile(r"[^A-Za-z0-9_.-]")
PROC = Path("/proc")


class ContainmentError(Exception):
    """The configured containment cannot be set up on this machine."""


class JobGroup(Protocol):
    """The processes of one running step."""

    join_fd: int | None
    """A descriptor the child writes `0` to before it executes (cgroup.procs), or None."""

    def adopt(self, pid: int) -> None:
        """The handler process has started with this pid (its own process group)."""

    def members(self) -> list[int]:
        """Live processes of the step (zombies excluded)."""

    def empty(self) -> bool:
        """No live process is left in the step: one cheap look (after every run, so it must
        not scan every process of the machine)."""

    def signal(self, sig: int) -> None:
        """Send `sig` to every member."""

    def kill(self) -> None:
        """SIGKILL every member, as atomically as the mechanism allows."""

    def close(self) -> None:
        """Kill what is left and release the group (remove the cgroup, reap orphans); may
        block (a killed process takes a moment to leave): run it in a worker thread."""

    def close_if_empty(self) -> bool:
        """Release the group at once if nothing is left in it (the usual end of a step, done
        on the event loop); False when `close()` is still needed."""


class Containment(Protocol):
    kind: str

    def group(self, name: str) -> JobGroup: ...

    def sweep(self, name: str) -> int:
        """Kill whatever an earlier agent left running in the group `name`; how many."""

    def sweep_all(self) -> int:
        """At start, before any step runs: empty and remove every group an earlier agent of
        this state directory left behind; how many processes were killed."""


def group_name(namespace: str | None, job_id: str, execution_number: int) -> str:
    """The group of one execution: `<namespace or default>.<jobId>.<executionNumber>`."""
    raw = f"{namespace or 'default'}.{job_id}.{execution_number}"
    return _GROUP_NAME.sub("_", raw)[:200]


# -- /proc ---------------------------------------------------------------------------------------


@model(slots=True)
class _Proc:
    """One process as /proc shows it, enough to tell whether a group still holds it."""

    pid: int
    ppid: int
    pgrp: int
    zombie: bool
    start: int
    """Start time in clock ticks since boot."""


def _read_proc(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    if len(fields) < 20:
        return None
    return _Proc(
        pid=pid,
        ppid=int(fields[1]),
        pgrp=int(fields[2]),
        zombie=fields[0] in (b"Z", b"X"),
        start=int(fields[19]),
    )


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


# -- cgroup v2 -----------------------------------------------------------------------------------


def _cgroup2_mount() -> Path | None:
    """Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup, or .../unified (hybrid)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        if after.split(" ", 1)[0] == "cgroup2":
            point = before.split()[4]
            return Path(point.replace("\\040", " "))
    return None


def _own_cgroup() -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    return None


def _cgroup_members(path: Path) -> list[int]:
    pids: list[int] = []
    for directory, _subdirs, _files in os.walk(path):
        try:
            text = (Path(directory) / "cgroup.procs").read_text()
        except OSError:
            continue
        pids.extend(int(line) for line in text.split())
    return [pid for pid in pids if (proc := _read_proc(pid)) is not None and not proc.zombie]


def _cgroup_kill(path: Path) -> None:
    """SIGKILL the whole subtree: `cgroup.kill` (Linux 5.14+), else freeze and kill one by one."""
    if not path.is_dir():
        return
    try:
        (path / "cgroup.kill").write_text("1")
        return
    except OSError:
        pass
    frozen = path / "cgroup.freeze"
    with contextlib.suppress(OSError):
        frozen.write_text("1")  # no new fork can race the loop below
    for _ in range(100):
        members = _cgroup_members(path)
        if not members:
            break
        for pid in members:
            _kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        frozen.write_text("0")


def _remove_cgroup(path: Path, timeout: float = 5.0) -> None:
    """Remove an emptied cgroup (and any it contains); killed members may take a moment."""
    deadline = time.monotonic() + timeout
    for directory, _subdirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
        while True:
            try:
                os.rmdir(directory)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    log.warning("cannot remove a job's cgroup", path=directory, error=str(exc))
                    return
                time.sleep(0.01)  # the kernel releases killed tasks asynchronously


@model(frozen=False)
class CgroupContainment:
    """Each job in a cgroup of its own below `base`: every process of it is found and killed,
    whatever session it started."""

    base: Path
    previous_bases: tuple[Path, ...] = ()
    kind: str = "cgroup"

    @functools.cached_property
    def _base_text(self) -> str:
        return str(self.base)

    def group(self, name: str) -> JobGroup:
        # Joined as text: a `Path` made per step cost more than the step's `mkdir` (issue 18).
        path = f"{self._base_text}/{name}"
        try:
            return _group_types()[0](path)
        except OSError as exc:
            raise ContainmentError(f"cannot create the cgroup {path}: {exc.strerror}") from None

    def sweep(self, name: str) -> int:
        count = 0
        for base in (self.base, *self.previous_bases):
            path = base / name
            if path.is_dir():
                count += len(_cgroup_members(path))
                _cgroup_kill(path)
                _remove_cgroup(path)
        return count

    def sweep_all(self) -> int:
        count = 0
        for base in (self.base, *self.previous_bases):
            if not base.is_dir():
                continue
            for child in [path for path in base.iterdir() if path.is_dir()]:
                count += len(_cgroup_members(child))
                _cgroup_kill(child)
                _remove_cgroup(child)
            with contextlib.suppress(OSError):
                base.rmdir()
        return count

    def release(self) -> bool:
        """At a clean exit: remove the base and the empty job cgroups in it (a step's own is
        removed at its end; one left empty by a failed removal goes too). The kernel refuses
        `rmdir` on a cgroup that holds a process (EBUSY), so a job's processes left running
        keep theirs and the base, for the next start's sweep; True when the base is gone.
        Left in place, every agent's base stayed for ever (24,828 empty ones from the test
        suite on one machine)."""
        try:
            children = [entry.path for entry in os.scandir(self.base) if entry.is_dir()]
        except FileNotFoundError:
            return True
        except OSError:
            return False
        for child in children:
            with contextlib.suppress(OSError):
                os.rmdir(child)
        try:
            os.rmdir(self.base)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True


def sha256_hex(data: bytes) -> str:
    """SHA-256 of `data` in hex, as `hashlib.sha256(data).hexdigest()`, by the interpreter's
    built-in SHA-2 (`_sha2`, `_sha256` before Python 3.12) where it has one.

    The base's tag is the only digest an agent takes before its first job, and hashlib would
    load OpenSSL's digests for it: 0.6 MB resident for the agent's whole life over awscrt,
    which uses no other OpenSSL digest (issue 18). hashlib when it is already loaded (paho
    imports it), or when the interpreter was built without its own SHA-2.
    """
    if "hashlib" not in sys.modules:  # paho imports it: then it costs nothing more
        try:
            builtin = importlib.import_module("_sha2" if sys.version_info >= (3, 12) else "_sha256")
        except ImportError:
            pass
        else:
            return str(builtin.sha256(data).hexdigest())
    import hashlib

    return hashlib.sha256(data).hexdigest()


def _cgroup_containment(state_dir: Path) -> CgroupContainment:
    mount = _cgroup2_mount()
    own = _own_cgroup()
    if mount is None or own is None:
        raise ContainmentError("no cgroup v2 hierarchy is mounted")
    tag = sha256_hex(str(state_dir.resolve()).encode())[:12]
    base = mount / own.lstrip("/") / f"jobs-agent.{tag}"
    try:
        base.mkdir(mode=0o755, exist_ok=True)
        probe = base / f"probe.{os.getpid()}"
        probe.mkdir(mode=0o755, exist_ok=True)
        writable = os.access(probe / "cgroup.procs", os.W_OK)
        probe.rmdir()
    except OSError as exc:
        raise ContainmentError(
            f"cannot create cgroups below {base.parent}: {exc.strerror or exc}"
            " (under systemd: Delegate=yes)"
        ) from None
    if not writable:
        raise ContainmentError(f"cannot move processes into cgroups below {base}")
    # Remembered in the state directory: an agent started from another cgroup (outside
    # systemd) must still find what an earlier one left in its own. Written only when it
    # changed: the same base at every start under systemd, and a write on the flash each start.
    record = state_dir / "cgroup-base"
    previous: tuple[Path, ...] = ()
    text = None
    with contextlib.suppress(OSError, ValueError):
        text = record.read_text()
        old = Path(text.strip())
        if old.is_absolute() and old != base and old.is_relative_to(mount):
            previous = (old,)
    if text != f"{base}\n" and state_dir.is_dir():
        with contextlib.suppress(OSError):
            record.write_text(f"{base}\n")
    return CgroupContainment(base, previous)


# -- subreaper -----------------------------------------------------------------------------------


@model(frozen=False)
class SubreaperContainment:
    """Without a delegated cgroup: the agent is the subreaper of what its jobs leave behind."""

    kind: str = "subreaper"

    def group(self, name: str) -> JobGroup:
        return _group_types()[1]()

    def sweep(self, name: str) -> int:
        return 0  # orphans of a dead agent went to init: `agent.engine.orphans` finds them

    def sweep_all(self) -> int:
        return 0


@functools.cache
def _group_types() -> tuple[type[CgroupGroup], type[SubreaperGroup]]:
    """`job_groups`' two kinds, imported at the first step (not at start) and kept: an import
    statement costs about 8 k instructions at every run, its module loaded or not (`from`
    looks the module up, checks its spec and asks it for `__path__`, an AttributeError made
    and dropped), and a step's group asked one per script job (issue 18)."""
    from jobs_agent.dispatch.job_groups import CgroupGroup, SubreaperGroup

    return CgroupGroup, SubreaperGroup


def _become_subreaper() -> None:
    import ctypes  # only in subreaper mode: the start-up sweep of cgroups needs none (issue 18)

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise ContainmentError(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")


# -- choosing ------------------------------------------------------------------------------------

_chosen: dict[tuple[str, Path], Containment] = {}
_last: tuple[str, Path, Containment] | None = None
"""The last answer of `containment_for`: asked again with the very same state directory (every
step asks twice), it is given without hashing the `Path`, a call into pathlib (issue 18)."""


def containment_for(mode: str, state_dir: Path) -> Containment:
    """The containment of this agent process (set up once per mode and state directory)."""
    global _last
    last = _last
    if last is not None and last[1] is state_dir and last[0] == mode:
        return last[2]
    key = (mode, state_dir)
    if key in _chosen:
        _last = (mode, state_dir, _chosen[key])
        return _chosen[key]
    if key in _chosen:
        return _chosen[key]
    chosen: Containment
    if mode == "subreaper":
        _become_subreaper()
        chosen = SubreaperContainment()
    else:
        try:
            chosen = _cgroup_containment(state_dir)
        except ContainmentError as exc:
            if mode == "cgroup":
                raise
            log.info("cgroup containment not available; using a child subreaper", reason=str(exc))
            _become_subreaper()
            chosen = SubreaperContainment()
    log.info("job containment", kind=chosen.kind)
    _chosen[key] = chosen
    _last = (mode, state_dir, chosen)
    return chosen


def release(state_dir: Path) -> bool:
    """The agent of `state_dir` exits cleanly: its cgroup base goes if nothing is left in it
    (`CgroupContainment.release`); the next `containment_for` sets up again. True unless a
    base had to stay (a process still in it)."""
    global _last
    if _last is not None and _last[1] == state_dir:
        _last = None
    released = True
    for mode in CONTAINMENT_MODES:  # by key: `sim fleet` ends thousands of agents at once
        chosen = _chosen.pop((mode, state_dir), None)
        if isinstance(chosen, CgroupContainment) and not chosen.release():
            log.warning("a job's cgroup still holds a process; left", path=str(chosen.base))
            released = False
    return released
