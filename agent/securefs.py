"""Paths that no other account can change, and file operations that cannot be redirected.

The agent runs as root and touches paths that other local accounts may be able to change: the
handler a document names, the directory a download goes to, the files it gives a `runAsUser`
step. Checking a path and then using it by name is a race: between the two, anyone who can
write to one of its directories can swap in a symlink or another directory. Two tools close it:

* `open_trusted`: a path counts as trusted only if every directory from `/` down to it is owned
  by root (or the agent's own user) and not writable by group or others, so that no other account
  can change what the name means, now or later. A world-writable directory with the sticky bit
  (`/tmp`) is accepted when the next component is itself owned by root or the agent: others can
  neither rename nor remove it. The walk opens each component relative to the previous one with
  `O_NOFOLLOW` and checks the open descriptor (`fstat`), never the name.
* `open_directory`: the same walk without the ownership rules, for places a document chose (a
  download's directory): symlinks are not followed while walking, so the descriptor that comes
  back is the real directory, and everything after it is done relative to that descriptor.

Both take the path with its symlinks already resolved (`os.path.realpath`); a symlink that
appears between the resolution and the walk makes the walk fail instead of being followed.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import stat
from collections.abc import Iterator
from pathlib import Path

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_PROC_FD = Path("/proc/self/fd")
SHEBANG_MAX = 256
"""The kernel reads at most this many bytes of a `#!` line (BINPRM_BUF_SIZE)."""


class UntrustedPath(Exception):
    """A path another account could change (or that changed while it was checked).

    `component` is the offending file or directory and `problem` says what is wrong with it
    ("is writable by others (mode 0777)"), so callers can word their own refusal.
    """

    def __init__(self, reason: str, component: Path | None = None, problem: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.component = component
        self.problem = problem
        self.is_dir = False


def trusted_uids() -> frozenset[int]:
    """Who may own what the agent trusts: root and the agent's own user."""
    return frozenset({0, os.geteuid()})


def describe_owner_problem(
    info: os.stat_result, *, sticky_ok: bool, trusted: frozenset[int] | None = None
) -> str | None:
    """Why another account could change this file or directory; None when nobody can.
    `trusted`: `trusted_uids()`, when the caller already has it (a walk asks once)."""
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (trusted_uids() if trusted is None else trusted):
        return f"is owned by uid {info.st_uid}, not by root or the agent's user"
    if mode & (stat.S_IWOTH | stat.S_IWGRP):
        if sticky_ok and mode & stat.S_ISVTX:
            return None
        whom = "others" if mode & stat.S_IWOTH else "its group"
        return f"is writable by {whom} (mode {mode:04o})"
    return None


def is_private_file(info: os.stat_result) -> bool:
    """A regular file of the agent's user, mode 0600, with no other name (a hard link that a
    process planted in its place has two): one the agent may empty and write again."""
    return (
        stat.S_ISREG(info.st_mode)
        and info.st_nlink == 1
        and info.st_uid == os.geteuid()
        and stat.S_IMODE(info.st_mode) == 0o600
    )


_REUSE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def keep_emptied(name: str, spare: str, *, dir_fd: int | None = None) -> bool:
    """Empty the file `name` and rename it to `spare`, for `take_spare` to reuse: on ext4 a
    file created where one was just unlinked costs a search of the inode table (issue 18).
    Only a file `is_private_file` says the agent may reuse, checked by descriptor after an open
    that follows no symlink (and never blocks on a FIFO); False otherwise, and the caller
    unlinks it. A spare already there is replaced."""
    try:
        fd = os.open(name, _REUSE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not is_private_file(os.fstat(fd)):
            return False
        os.ftruncate(fd, 0)  # nothing of what it held is left for its next use
        os.rename(name, spare, src_dir_fd=dir_fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def take_spare(spare: str, name: str, flags: int, *, dir_fd: int | None = None) -> int | None:
    """The file `keep_emptied` kept at `spare`, renamed to `name` (replacing it: the caller
    knows nothing of its own is there) and opened with `flags` (never following a symlink),
    if `is_private_file` still says so, emptied; else None, with nothing at `name` (no spare
    kept; or one that failed the check, then unlinked): the caller creates it."""
    try:
        os.rename(spare, name, dst_dir_fd=dir_fd)
    except OSError:
        return None
    try:
        fd = os.open(name, flags | _REUSE_FLAGS, dir_fd=dir_fd)
    except OSError:
        fd = -1
    if fd >= 0:
        try:
            info = os.fstat(fd)
            if is_private_file(info):
                if info.st_size:
                    os.ftruncate(fd, 0)
                return fd
        except OSError:
            pass
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)
    return None


def _components(path: str | Path) -> list[str]:
    """The names below `/`. A text in normal form (absolute, no `.`, `..`, doubled or trailing
    `/`: what `os.path.normpath` gives back unchanged), as a handler's path usually is, is
    split as it is: a `Path` built for it cost more than the rest of the walk's Python (issue
    18). Anything else is split as `PurePath.parts` splits it, as before."""
    if isinstance(path, str):
        if path.startswith("/") and not path.startswith("//") and os.path.normpath(path) == path:
            return path.split("/")[1:] if path != "/" else []
        path = Path(path)
    if not path.is_absolute():
        raise UntrustedPath(f"{path} is not an absolute path")
    return [part for part in path.parts[1:] if part]


def _refuse_swapped(exc: OSError, shown: str) -> None:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):  # a symlink (or a file) where a dir was
        raise UntrustedPath(
            f"{shown} changed while it was checked (a symlink or a file appeared in its path)"
        ) from None


def _walk(
    path: str | Path, *, trusted: bool, final_flags: int, what: str
) -> tuple[int, os.stat_result | None]:
    """Open `path` component by component; with `trusted`, check every one as described.
    The descriptor, and (with `trusted`) its `fstat`, which the caller need not ask again.

    A handler's path is walked twice per script job, so the loop stays lean (issue 18): the
    trusted owners are asked once per walk, the components are named as strings (a `Path`
    is built only for an error), and a component is described (`describe_owner_problem`)
    only when it is not plainly fine: owned by a trusted user, writable by nobody else."""
    parts = _components(path)
    fd = os.open("/", _DIR_FLAGS if parts else final_flags & ~os.O_NOFOLLOW)
    try:
        owners = trusted_uids() if trusted else frozenset()
        info = os.fstat(fd) if trusted else None
        if (
            info is not None
            and (info.st_uid not in owners or info.st_mode & _WRITABLE_BY_OTHERS)
            and (problem := describe_owner_problem(info, sticky_ok=True, trusted=owners))
        ):
            raise UntrustedPath(f"{what}: / {problem}", Path("/"), problem)
        current = ""
        last_index = len(parts) - 1
        for index, name in enumerate(parts):
            last = index == last_index
            current = f"{current}/{name}"
            flags = final_flags if last else _DIR_FLAGS
            try:
                child = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                _refuse_swapped(exc, current)
                raise
            os.close(fd)
            fd = child
            if trusted:
                info = os.fstat(fd)
                if info.st_uid in owners and not info.st_mode & _WRITABLE_BY_OTHERS:
                    continue  # the usual component: nothing to describe (a call less each)
                # Every component must be owned by root or the agent; only a directory on the
                # way may be world-writable, and only with the sticky bit (its next component,
                # owned by root or the agent, cannot then be renamed or removed by others).
                problem = describe_owner_problem(info, sticky_ok=not last, trusted=owners)
                if problem is not None:
                    error = UntrustedPath(f"{what}: {current} {problem}", Path(current), problem)
                    error.is_dir = stat.S_ISDIR(info.st_mode)
                    raise error
        return fd, info
    except BaseException:
        os.close(fd)
        raise


def open_trusted(path: Path, *, what: str, final_flags: int = _DIR_FLAGS) -> int:
    """Open `path` (already resolved) if no account but root or the agent's can change it.

    Every directory from `/` down, and `path` itself, must be owned by root or the agent's user
    and not writable by group or others (a sticky directory is fine: see the module docstring).
    Raises `UntrustedPath` naming the first offending component. `final_flags` opens the last
    component (default: an `O_PATH` directory descriptor).
    """
    return _walk(path, trusted=True, final_flags=final_flags | os.O_NOFOLLOW, what=what)[0]


def open_directory(path: Path) -> int:
    """An `O_RDONLY` descriptor of the directory `path` (resolved), reached without following
    a symlink: what it refers to can no longer be changed by renaming or linking."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    return _walk(path, trusted=False, final_flags=flags, what=str(path))[0]


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    """Close `fd` when the block ends."""
    try:
        yield fd
    finally:
        os.close(fd)


class CheckedExecutable:
    """An executable opened and checked by descriptor: what the sandbox runs.

    `fd` (close-on-exec) is the very file that was checked. A binary is executed through it; a
    script (`#!`) cannot be, because its interpreter opens the script again by name after the
    exec (and would see the descriptor closed): for a script the sandbox executes the name,
    whose every directory no other account can change, after checking once more, as the new
    user and just before the exec, that the name still refers to this file (`same_file`).
    """

    def __init__(self, path: str | Path, fd: int, info: os.stat_result | None = None) -> None:
        self.name = os.fspath(path)
        """The path, as text: what a script is executed by and `same_file` looks at."""
        self.fd = fd
        if info is None:
            info = os.fstat(fd)
        self.device = info.st_dev
        self.inode = info.st_ino
        self.head = os.pread(fd, SHEBANG_MAX, 0)
        """The file's first bytes, read through the checked descriptor: its `#!` line, if any."""
        self.is_script = self.head.startswith(b"#!")

    @functools.cached_property
    def path(self) -> Path:
        """`name` as a `Path`, made when asked: a script job's spawn needs only the text."""
        return Path(self.name)

    @property
    def exec_path(self) -> str:
        """What to hand to execve: the descriptor for a binary, the name for a script."""
        return self.name if self.by_name else f"/proc/self/fd/{self.fd}"

    @functools.cached_property
    def by_name(self) -> bool:
        """True when the exec goes by name (and `same_file` must be checked first): a script,
        or any file where /proc is not mounted. Decided at the first ask: a step asked it
        five times, a binary's each a `stat` of /proc/self/fd (issue 18)."""
        return self.is_script or not _PROC_FD.is_dir()

    def same_file(self) -> bool:
        try:
            info = os.stat(self.name)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == (self.device, self.inode)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_executable(path: str | Path, *, what: str, resolved: bool = False) -> CheckedExecutable:
    """Open the executable `path` through a trusted chain (`open_trusted`) and check the open
    file: a regular file with an execute bit. Raises `UntrustedPath` with the reason.

    `resolved`: the caller has just resolved `path` (`Path.resolve`), so it is not resolved
    again. Nothing is trusted on that word: the walk follows no symlink, so one that appeared
    since makes it fail instead.

    Otherwise a normalized absolute `path` is walked as it is first: the walk follows no
    symlink, so if it succeeds `path` was its own resolution. Only if it fails (a symlink on
    the way, or anything else) is `path` resolved and walked again, exactly as before: the
    outcome is the same, and the usual handler path costs no `lstat` per component."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    resolved_path: str | Path = path
    if resolved:
        fd, info = _walk(path, trusted=True, final_flags=flags, what=what)
    else:
        text = os.fspath(path)
        try:
            if not text.startswith("/") or text.startswith("//") or os.path.normpath(text) != text:
                raise UntrustedPath("not in normal form")  # resolved below
            fd, info = _walk(path, trusted=True, final_flags=flags, what=what)
        except (UntrustedPath, OSError):
            resolved_path = Path(os.path.realpath(path))
            fd, info = _walk(resolved_path, trusted=True, final_flags=flags, what=what)
    try:
        assert info is not None
        problem = ""
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISREG(info.st_mode):
            problem = "is not a regular file"
        elif not mode & 0o111:
            problem = f"is not executable (mode {mode:04o})"
        if problem:
            raise UntrustedPath(f"{what} {resolved_path} {problem}", Path(resolved_path), problem)
        return CheckedExecutable(path, fd, info)
    except BaseException:
        os.close(fd)
        raise


def ensure_private_directory(path: Path, *, what: str) -> list[str]:
    """Create `path` mode 0700 if missing; refuse it if another account could change it or
    anything above it (`open_trusted`); tighten a group- or world-readable mode to 0700.

    Returns what was changed, for the caller to log. The agent's state directory is made this
    way: the database, the job logs and the documents in it are nobody else's to read.
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = open_trusted(Path(os.path.realpath(path)), what=what, final_flags=flags)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o700)
            return [f"{path}: mode {mode:04o} tightened to 0700"]
        return []
    finally:
        os.close(fd)
