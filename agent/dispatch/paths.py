"""Where a handler named by a job document may come from, and who may have written it.

A job document is input from the network; the executables it names are not. A handler name
must not leave its directory (`..`, absolute names, symlinks out), and no account but root or
the agent's may be able to change the file or any directory on its path, from `/` down: whoever
can rename a parent directory can swap the handler between the check and the exec, and get their
own code run, possibly as root. The check walks the path by descriptor (`agent.securefs`), and
the sandbox checks the executable once more, by descriptor, when it runs it. Every refusal names
the file or directory and its owner or mode, so the operator can fix it with one `chown`/`chmod`.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import jobs_agent_handlers
from jobs_agent.datamodel import model
from jobs_agent.securefs import UntrustedPath, open_executable, open_trusted
from jobs_agent_handlers.outcome import JobRejected

BUILTIN_SCRIPTS_DIR = Path(jobs_agent_handlers.__file__).resolve().parent / "scripts"
"""Our own implementations of the handlers the AWS managed templates call."""

PLACEHOLDER = re.compile(r"^\$\{aws:iot:[^}]*\}$")
"""A template placeholder AWS did not replace (an optional parameter that was not given)."""

DEFAULT_PATH_VALUES = ("", "default")


@model
class HandlerFile:
    """A located handler executable and whether it is one of ours (run through /bin/sh);
    `head`: its first bytes as the check read them (its `#!` line, for `shebang`)."""

    name: str
    """Its path as text: what the step's argv takes (no `Path` made per script job)."""
    builtin: bool
    head: bytes | None = None

    @property
    def path(self) -> Path:
        return Path(self.name)


def is_default_path(path: str | None) -> bool:
    """`path` absent, empty, "default" or an unreplaced placeholder all mean the handler dir."""
    return path is None or path.strip() in DEFAULT_PATH_VALUES or bool(PLACEHOLDER.match(path))


def _refusal(exc: UntrustedPath, base: Path, what: str) -> JobRejected:
    """Word a refusal from the trusted-path walk the way an operator can act on it."""
    component = exc.component
    if component is None or not exc.problem:
        return JobRejected(exc.reason)
    if not exc.is_dir:
        return JobRejected(f"{what} {component} {exc.problem}")
    if component == base or component.is_relative_to(base):
        return JobRejected(f"{_directory_word(what)} {component} {exc.problem}")
    return JobRejected(
        f"the directory {component} above the {_directory_word(what)} {base} {exc.problem}:"
        f" whoever can change it can swap the {what.removesuffix(' directory')}"
    )


def _directory_word(what: str) -> str:
    return what if what.endswith("directory") else f"{what} directory"


def check_executable(
    path: Path, base: Path, what: str = "handler", *, resolved: bool = False
) -> bytes:
    """Refuse `path` unless it is a regular executable file that, like every directory from `/`
    down to it, only root or the agent's user can change (see the module docstring).
    `resolved`: `path` has no symlink left to resolve (see `open_executable`). Returns the
    file's first bytes, read through the checked descriptor."""
    try:
        executable = open_executable(path, what=what, resolved=resolved)
    except UntrustedPath as exc:
        raise _refusal(exc, base, what) from None
    executable.close()
    return executable.head


def check_trusted(path: Path, what: str) -> Path:
    """Refuse a file or directory the agent will run or import from unless it, and every
    directory from `/` down to it, can be changed only by root or the agent's user; returns
    the resolved path (which is what must then be used)."""
    resolved = path.resolve()
    try:
        fd = open_trusted(resolved, what=what, final_flags=os.O_PATH | os.O_CLOEXEC)
    except UntrustedPath as exc:
        raise _refusal(exc, resolved, what) from None
    except OSError as exc:
        raise JobRejected(f"{what} {path} cannot be inspected: {exc.strerror}") from None
    os.close(fd)
    return resolved


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise JobRejected(
            f"handler name {name!r} is not a plain file name (no '/', no '..'): handlers are"
            " looked up only inside the handler directory"
        )


def _inside(base: Path, relative: str) -> Path:
    """Resolve `relative` below the resolved directory `base`, refusing anything that ends up
    outside it."""
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise JobRejected(
            f"handler {relative!r} resolves to {candidate}, outside the handler directory {base}"
        )
    return candidate


def resolved_directory(directory: Path) -> Path:
    """`directory.resolve()`, without a look at every component (an `lstat` and a dozen
    Python calls each, for every script step: issue 18) when the directory is where its name
    says: the kernel's path of a descriptor opened on it (`/proc/self/fd`) is its name in
    normal form. Anything else (a symlink on the way, no such directory, no /proc, a directory
    renamed while it was looked at) is resolved by name, as before, so the answer is always
    the one resolving by name gives."""
    given = os.path.abspath(directory)
    try:
        fd = os.open(given, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return directory.resolve()
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = None
    finally:
        os.close(fd)
    return Path(given) if target == given else directory.resolve()


def _found_as_named(handler_dir: Path, name: str) -> HandlerFile | None:
    """The usual handler (a file right in the handler directory, named as the directory is
    written), found by the trusted walk alone: the walk opens every component without
    following a symlink, so when it succeeds on an absolute path in normal form, that path is
    its own resolution and the file is inside the directory; resolving the directory first
    (`resolved_directory`) and an `lstat` of the handler told nothing more (three system calls
    and a dozen `Path` operations per script job: issue 18). Anything else (a symlink, no
    such file, a refusal) is None: `_locate` then looks again as before, with the same
    outcome and words."""
    text = os.fspath(handler_dir)
    if text == "/" or not text.startswith("/") or text.startswith("//"):
        return None
    if os.path.normpath(text) != text:
        return None
    path = f"{text}/{name}"
    try:
        executable = open_executable(path, what="handler", resolved=True)  # walked as text
    except (UntrustedPath, OSError, ValueError):
        return None
    executable.close()
    return HandlerFile(path, builtin=False, head=executable.head)


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
    if is_default_path(path) and (usual := _found_as_named(handler_dir, name)) is not None:
        return usual
    base = resolved_directory(handler_dir)
    if is_default_path(path):
        directory = base
    else:
        assert path is not None
        directory = _inside(base, path)
        if not directory.is_dir():
            raise JobRejected(f"handler path {path!r} is not a directory inside {base}")
    candidate = directory / name
    try:
        found_mode: int | None = os.lstat(candidate).st_mode
    except (FileNotFoundError, NotADirectoryError):
        found_mode = None
    if found_mode is not None:
        # `directory` is resolved and `name` one plain component: unless it is a symlink, it
        # is its own resolution (one lstat where resolving walked every component again).
        resolved = _inside(directory, name) if stat.S_ISLNK(found_mode) else candidate
        if not resolved.is_relative_to(base):
            raise JobRejected(f"handler {candidate} points outside the handler directory {base}")
        head = check_executable(resolved, base, resolved=True)
        return HandlerFile(str(resolved), builtin=False, head=head)
    if is_default_path(path):
        for builtin_name in (name, f"{name}.sh"):
            builtin = BUILTIN_SCRIPTS_DIR / builtin_name
            if builtin.is_file():
                check_executable(builtin, BUILTIN_SCRIPTS_DIR, "built-in handler")
                return HandlerFile(str(builtin), builtin=True)
    if search_path is not None and (path is None or path.strip() != "default"):
        import shutil  # here, at a job: shutil loads lzma and bz2 (issue 18)

        found = shutil.which(name, path=search_path)
        if found is not None:
            check_executable(Path(found), Path(found).parent, "command")
            return HandlerFile(str(Path(found)), builtin=False)
    raise JobRejected(
        f"no handler {name!r} in {directory}"
        + (" (and no built-in handler or command of that name)" if is_default_path(path) else "")
    )
