"""The configuration file's parse, kept in the state directory for the daemon's next start.

A gateway restarts with the file it had: a start that finds the very same text reads the parse
it made last time (JSON, C-accelerated: well under a millisecond) instead of importing PyYAML
(17 ms of a cold start, 0.9 MB resident for the agent's whole life) and parsing (4.4 ms;
issue 18). What is kept is the parse alone, the plain data and the line of every key
(`config_yaml.parse_yaml`): validation, the environment's overrides, the checks and their error
messages run on it as they run on a fresh parse, so a hit and a miss make the same
`AgentConfig` and the same errors.

The key is exact: the whole text (compared, not hashed), the agent's version, this module's
`FORMAT`, Python's version and PyYAML's (read from its source, without importing it). A parse
whose data JSON could not give back as it was (a date, a binary, a non-string key, an infinite
float) is never kept, nor the parse of a file that sets a secret (`connection.password`: the
agent keeps no second copy of a secret; `config.load_config` calls `forget`). Anything else
(no file, a truncated or corrupt one, another text, another version, a file that is not the
agent's own private file) is a miss: a full parse, kept again.

Where: `config-cache.json` in the state directory, which the file itself names; it is found
before the parse from the text's top-level `state_dir:` line (or `JOBS_AGENT_STATE_DIR`, or the
default), and a hit counts only if the configuration built from it names that same directory.
It is written only by the daemon, once it has checked the state directory (root's, private:
`securefs.ensure_private_directory`), atomically, mode 0600; it is read only if it is the agent's
own private file (`securefs.is_private_file`). `config check` and `run --dry-run` never read or
write it (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Mapping
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any

from jobs_agent import __version__
from jobs_agent.securefs import is_private_file

CACHE_NAME = "config-cache.json"
FORMAT = 1
"""Bumped whenever `config_yaml.parse_yaml` changes what it makes of a text."""
DEFAULT_STATE_DIR = Path("/var/lib/jobs-agent")
"""`AgentConfig.state_dir`'s default (config.py checks that they agree)."""
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_STATE_DIR_LINE = re.compile(
    r"""^[ \t]*(?:state_dir|"state_dir"|'state_dir')[ \t]*:[ \t]*"""
    r"""(?:"(?P<double>[^"\\\n]*)"|'(?P<single>[^'\n]*)'|(?P<plain>[^\s#'"{\[&*!|>%@`][^\n#]*?))"""
    r"""[ \t]*,?[ \t]*(?:#[^\n]*)?$""",
    re.MULTILINE,
)
_VERSION_LINE = re.compile(r"""^__version__ = ['"]([^'"\n]+)['"]""", re.MULTILINE)


def pyyaml_version() -> str | None:
    """PyYAML's version as its source says it, found without importing it (None: not found)."""
    spec = PathFinder.find_spec("yaml")
    if spec is None or not spec.origin:
        return None
    try:
        with open(spec.origin, encoding="utf-8") as source:
            found = _VERSION_LINE.search(source.read(4096))
    except (OSError, UnicodeDecodeError):
        return None
    return f"{spec.origin} {found.group(1)}" if found else None


def cache_key() -> dict[str, Any] | None:
    """Everything besides the text that changes what a parse makes of it."""
    pyyaml = pyyaml_version()
    if pyyaml is None:
        return None
    return {"format": FORMAT, "agent": __version__, "python": sys.version, "pyyaml": pyyaml}


def cache_directory(text: str, config_path: Path, environ: Mapping[str, str]) -> Path | None:
    """Where the state directory the text names would be: the one place its cache is looked
    for and written. None when the text does not say it plainly (then there is no cache).
    Only a guess: a hit counts only once the configuration built from it agrees."""
    raw = environ.get("JOBS_AGENT_STATE_DIR")
    if raw is None:
        values = {
            next(v for v in match.groups() if v is not None)
            for match in _STATE_DIR_LINE.finditer(text)
        }
        if len(values) > 1:
            return None
        raw = values.pop() if values else str(DEFAULT_STATE_DIR)
    if not raw or raw.strip() != raw:
        return None
    directory = Path(raw)
    return directory if directory.is_absolute() else config_path.parent.resolve() / directory


def is_plain(value: Any) -> bool:
    """True when JSON gives `value` back exactly: str, int, finite float, bool, None, lists,
    and mappings with string keys (`parse_yaml` builds a new one for each, an alias's too)."""
    kind = type(value)
    if kind is dict:
        return all(type(k) is str and is_plain(v) for k, v in value.items())
    if kind is list:
        return all(is_plain(item) for item in value)
    if kind is float:
        return value == value and value not in (float("inf"), float("-inf"))
    return kind in (str, int, bool) or value is None


class ParseCache:
    """The daemon's cache of its file's parse: looked up at start and on SIGHUP, and the parse
    a miss had to make kept for `save`, once the state directory has been checked."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self._pending: tuple[Path, str] | None = None

    def lookup(
        self, text: str, config_path: Path, environ: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str], Path] | None:
        """The kept parse of `text` (data, where, and the directory it was found in), or None.
        The caller counts it used (`used`) once the configuration it makes names that
        directory."""
        directory = cache_directory(text, config_path, environ)
        key = cache_key()
        entry = None if directory is None or key is None else _read(directory / CACHE_NAME)
        if (
            entry is not None
            and entry.get("key") == key
            and entry.get("text") == text
            and type(entry.get("data")) is dict
            and is_plain(entry["data"])
            and _is_where(entry.get("where"))
        ):
            assert directory is not None
            return entry["data"], entry["where"], directory
        return None

    def used(self) -> None:
        self.hits += 1

    def missed(
        self,
        text: str,
        config_path: Path,
        environ: Mapping[str, str],
        parsed: tuple[dict[str, Any], dict[str, str]],
    ) -> None:
        """A full parse was made: keep it for `save`, if JSON can hold it exactly."""
        self.misses += 1
        self._pending = None
        directory = cache_directory(text, config_path, environ)
        key = cache_key()
        data, where = parsed
        if directory is None or key is None or not is_plain(data):
            return
        entry = {"key": key, "text": text, "data": data, "where": where}
        try:
            self._pending = (directory, json.dumps(entry, allow_nan=False))
        except ValueError:  # an integer longer than Python's digit limit: no cache
            return

    def forget(self) -> None:
        """Keep nothing of this parse: the file holds a secret, which the agent never copies."""
        self._pending = None

    def save(self, state_dir: Path) -> bool:
        """Write the kept parse into `state_dir` (checked private by the caller), if that is
        where it will be looked for; True when written."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] != state_dir:
            return False
        try:
            _write(state_dir, pending[1])
        except OSError:  # a full or read-only disk: the next start parses again
            return False
        return True


def _is_where(where: Any) -> bool:
    return type(where) is dict and all(type(k) is str and type(v) is str for k, v in where.items())


def _read(path: Path) -> dict[str, Any] | None:
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        if not is_private_file(os.fstat(fd)):
            return None
        with os.fdopen(os.dup(fd), "rb") as file:
            entry = json.loads(file.read())
    except (OSError, ValueError, RecursionError):
        return None
    finally:
        os.close(fd)
    return entry if type(entry) is dict else None


def _write(directory: Path, content: str) -> None:
    """Atomically, mode 0600, by names inside the directory opened once (a crash leaves the
    old file or the new one, never half of one; a leftover temporary is replaced)."""
    temporary = f".{CACHE_NAME}.{os.getpid()}"
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)
        fd = os.open(temporary, _WRITE_FLAGS, 0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "wb") as file:
            os.fchmod(fd, 0o600)  # whatever the umask
            file.write(content.encode("ascii"))
        os.replace(temporary, CACHE_NAME, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
