"""Where a handler named by a job document may come from, and who may have written it.

A job document is input from the network; the executables it names are not. A handler name
must not leave its directory (`..`, absolute names, symlinks out), and neither the directory
nor the file may be writable by anyone but root or the agent's user: otherwise any local user
could plant code that the agent then runs, possibly as root. Every refusal names the file and
its mode so the operator can fix it with one `chmod`.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import jobs_agent_handlers
from jobs_agent_handlers.api import JobRejected

BUILTIN_SCRIPTS_DIR = Path(jobs_agent_handlers.__file__).resolve().parent / "scripts"
"""Our own implementations of the handlers the AWS managed templates call."""

PLACEHOLDER = re.compile(r"^\$\{aws:iot:[^}]*\}$")
"""A template placeholder AWS did not replace (an optional parameter that was not given)."""

DEFAULT_PATH_VALUES = ("", "default")


@dataclass(frozen=True)
class HandlerFile:
    """A located handler executable and whether it is one of ours (run through /bin/sh)."""

    path: Path
    builtin: bool


def is_default_path(path: str | None) -> bool:
    """`path` absent, empty, "default" or an unreplaced placeholder all mean the handler dir."""
    return path is None or path.strip() in DEFAULT_PATH_VALUES or bool(PLACEHOLDER.match(path))


def check_not_writable_by_others(path: Path) -> None:
    """Refuse a file or directory that someone other than root or the agent could change."""
    try:
        info = path.stat()
    except OSError as exc:
        raise JobRejected(f"handler {path} cannot be inspected: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    kind = "handler directory" if stat.S_ISDIR(info.st_mode) else "handler"
    if mode & stat.S_IWOTH:
        raise JobRejected(f"{kind} {path} is writable by others (mode {mode:04o})")
    if mode & stat.S_IWGRP:
        raise JobRejected(f"{kind} {path} is writable by its group (mode {mode:04o})")
    if info.st_uid not in (0, os.geteuid()):
        raise JobRejected(
            f"{kind} {path} is owned by uid {info.st_uid}, not by root or the agent's user"
        )


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise JobRejected(
            f"handler name {name!r} is not a plain file name (no '/', no '..'): handlers are"
            " looked up only inside the handler directory"
        )


def _inside(directory: Path, relative: str) -> Path:
    """Resolve `relative` below `directory`, refusing anything that ends up outside it."""
    base = directory.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise JobRejected(
            f"handler {relative!r} resolves to {candidate}, outside the handler directory {base}"
        )
    return candidate


def _check_chain(base: Path, target: Path) -> None:
    """Every directory from the handler directory down to the file, and the file itself."""
    check_not_writable_by_others(base)
    current = base
    for part in target.relative_to(base).parts:
        current = current / part
        check_not_writable_by_others(current)


def locate_handler(
    handler_dir: Path, name: str, path: str | None = None, *, search_path: str | None = None
) -> HandlerFile:
    """`_locate`, with the file system's own refusals of a name (too long, a NUL byte, text
    that is not encodable) turned into REJECTED: they are properties of the document."""
    try:
        return _locate(handler_dir, name, path, search_path=search_path)
    except (OSError, ValueError) as exc:
        raise JobRejected(
            f"handler {name!r} (path {path!r}) cannot be looked up: {exc.__class__.__name__}:"
            f" {getattr(exc, 'strerror', None) or exc}"
        ) from None


def _locate(
    handler_dir: Path, name: str, path: str | None = None, *, search_path: str | None = None
) -> HandlerFile:
    """Find the executable a `runHandler` step (or an `operation`) names.

    `path` absent/"default"/empty/placeholder means `handler_dir`; otherwise it must be a
    directory inside `handler_dir` (relative paths are taken relative to it). When the default
    directory has no such handler, our built-in script of that name (or name + ".sh") is used.
    Only when `path` is absent (or empty, or an unreplaced placeholder) and neither exists, the
    name is looked up in `search_path`, as the Device Client does (`"handler": "echo"`): that
    grants nothing a `runCommand` step could not do, and the name still cannot contain a '/'.
    """
    _check_name(name)
    base = handler_dir.resolve()
    if is_default_path(path):
        directory = base
    else:
        assert path is not None
        directory = _inside(base, path)
        if not directory.is_dir():
            raise JobRejected(f"handler path {path!r} is not a directory inside {base}")
    candidate = directory / name
    if candidate.exists() or candidate.is_symlink():
        resolved = _inside(directory, name)
        if not resolved.is_relative_to(base):
            raise JobRejected(f"handler {candidate} points outside the handler directory {base}")
        _check_chain(base, resolved)
        if not resolved.is_file():
            raise JobRejected(f"handler {resolved} is not a regular file")
        if not os.access(resolved, os.X_OK):
            mode = stat.S_IMODE(resolved.stat().st_mode)
            raise JobRejected(f"handler {resolved} is not executable (mode {mode:04o})")
        return HandlerFile(resolved, builtin=False)
    if is_default_path(path):
        for builtin_name in (name, f"{name}.sh"):
            builtin = BUILTIN_SCRIPTS_DIR / builtin_name
            if builtin.is_file():
                check_not_writable_by_others(builtin)
                return HandlerFile(builtin, builtin=True)
    if search_path is not None and (path is None or path.strip() != "default"):
        found = shutil.which(name, path=search_path)
        if found is not None:
            return HandlerFile(Path(found), builtin=False)
    raise JobRejected(
        f"no handler {name!r} in {directory}"
        + (" (and no built-in handler or command of that name)" if is_default_path(path) else "")
    )
