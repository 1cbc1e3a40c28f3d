"""The partial file of a download and its sidecar: the rules both download sources keep.

Bytes fetched so far stay in `PATH.part`, next to a sidecar `PATH.part.json` that names what
they are part of (the URL without its query, or the stream, file and version; the expected
sha256). A later attempt reuses them only when the sidecar matches its own request exactly, and
only when the `.part` and the sidecar are plain files of the agent's user with one link each;
anything else is someone else's and is discarded. Everything is done relative to a descriptor of
the target's directory, opened without following symlinks, and every name is opened with
`O_NOFOLLOW`: no path another account can change is followed. The file appears at `PATH` only
complete, by a rename in that directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.securefs import UntrustedPath, open_directory
from jobs_agent_handlers.api import JobFailed, JobRejected

DEFAULT_MAX_BYTES = 4 * 1024**3
SIDECAR_VERSION = 1
SIDECAR_MAX_BYTES = 64 * 1024
CHUNK = 256 * 1024
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@model
class Target:
    """Where a download goes and what it must be: the document's `path`, `sha256`, `maxBytes`."""

    path: Path
    sha256: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_values(cls, path: Any, sha256: Any = None, max_bytes: Any = None) -> Target:
        """Raises `JobRejected` naming the offending field."""
        if not isinstance(path, str) or not os.path.isabs(path) or "\x00" in path:
            raise JobRejected(f"path: expected an absolute file path, got {path!r}")
        if path.endswith("/") or os.path.basename(path) in ("", ".", ".."):
            raise JobRejected(f"path: expected a file name at the end, got {path!r}")
        if sha256 in (None, ""):
            sha256 = None
        elif not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise JobRejected("sha256: expected 64 hexadecimal digits")
        limit = DEFAULT_MAX_BYTES
        if max_bytes is not None:
            if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
                raise JobRejected(f"maxBytes: expected a positive integer, got {max_bytes!r}")
            limit = max_bytes
        return cls(Path(path), sha256.lower() if sha256 else None, limit)

    @property
    def part(self) -> str:
        return self.path.name + ".part"

    @property
    def sidecar(self) -> str:
        return self.path.name + ".part.json"


def open_target_directory(directory: Path) -> int:
    """An `O_RDONLY` descriptor of the download's directory; `JobFailed` saying why not."""
    try:
        return open_directory(Path(os.path.realpath(directory)))
    except UntrustedPath as exc:
        raise JobFailed(f"directory {directory}: {exc.reason}") from None
    except FileNotFoundError:
        raise JobFailed(f"directory {directory} does not exist") from None
    except OSError as exc:
        raise JobFailed(f"directory {directory}: {exc.strerror}") from None


def is_own_file(fd: int) -> bool:
    """A plain file of the agent's user with one link: nobody else's, and not linked elsewhere."""
    info = os.fstat(fd)
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid() and info.st_nlink == 1


def read_sidecar(dir_fd: int, name: str) -> dict[str, Any] | None:
    """The sidecar's content if it is the agent's own file holding a JSON object, else None."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not is_own_file(fd):
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = json.loads(handle.read(SIDECAR_MAX_BYTES))
    except ValueError:
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def write_sidecar(dir_fd: int, name: str, data: Mapping[str, Any]) -> None:
    """Replace the sidecar atomically (a temporary file, fsync, rename)."""
    temporary = name + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary, dir_fd=dir_fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def own_size(dir_fd: int, name: str) -> int | None:
    """The size of `name` if it is the agent's own file (`is_own_file`), else None."""
    try:
        fd = os.open(name, _READ, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        return os.fstat(fd).st_size if is_own_file(fd) else None
    finally:
        os.close(fd)


def discard(dir_fd: int, *names: str) -> None:
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)


def sha256_of(dir_fd: int, name: str, check: Callable[[], None]) -> str:
    """The file's SHA-256; `check` is called between chunks (it raises to stop)."""
    digest = hashlib.sha256()
    fd = os.open(name, _READ, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            check()
            digest.update(block)
    return digest.hexdigest()


def complete(dir_fd: int, part: str, final: str, sidecar: str) -> None:
    """Put the finished `.part` in place, drop its sidecar, and make both durable."""
    os.rename(part, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    discard(dir_fd, sidecar)
    os.fsync(dir_fd)
