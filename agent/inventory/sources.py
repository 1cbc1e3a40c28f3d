"""Where the device learns what is installed: a file, a command, or a Python plugin.

Each source yields the `$package` shape, `{"<package>": {"version", "attributes"}}`, checked by
`jobs_agent.inventory.model` (a wrong entry names its source and path). Sources are read in the
configured order and a later one overrides an earlier one for the same package, so a command
that knows the firmware can sit after a file that lists the applications.

What the inventory says is trusted: it is reported to the cloud as the truth, and it lets a job
finish SUCCEEDED without running ("already installed"). So no account but root's and the
agent's may change a source:

* a file is read only through a path whose every directory, and the file itself, belong to root
  or the agent's user and are writable by nobody else (`securefs.open_trusted`);
* a command's executable is checked the same way, runs without a shell, with an empty
  environment but `PATH` and `LANG`, no descriptors but its pipes, in its own session, and is
  killed (the whole session) after its timeout;
* a plugin is Python code the agent imports: installed in its environment, or in a
  `jobs.plugin_path` directory (which is checked like a handler directory).

Every source is bounded: 64 KiB of file or output, which is more than an 8 KB shadow can hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
import signal
import stat
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.inventory.model import InventoryError, Packages, parse_packages

# The base and the reading, importable from here as they always were.
from jobs_agent.inventory.reading import MAX_SOURCE_BYTES as MAX_SOURCE_BYTES
from jobs_agent.inventory.reading import InventoryReading as InventoryReading
from jobs_agent.inventory.reading import InventorySource as InventorySource
from jobs_agent.inventory.reading import read_inventory as read_inventory
from jobs_agent.securefs import UntrustedPath, open_executable, open_trusted

DEFAULT_COMMAND_TIMEOUT = 30.0
COMMAND_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDERR_TAIL = 1024


@model
class FileSource(InventorySource):
    """A JSON file `{"<package>": {"version", "attributes"}}` kept by the device's installer."""

    path: Path

    def describe(self) -> str:
        return f"file {self.path}"

    async def read(self) -> Packages:
        return self._parse(await asyncio.to_thread(self._read))

    def _read(self) -> bytes:
        resolved = Path(os.path.realpath(self.path))
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
        try:
            fd = open_trusted(resolved, what="inventory file", final_flags=flags)
        except UntrustedPath as exc:
            raise InventoryError(f"{self.describe()}: {exc.reason}") from None
        except OSError as exc:
            raise InventoryError(f"{self.describe()}: {exc.strerror or exc}") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InventoryError(f"{self.describe()}: not a regular file")
            chunks: list[bytes] = []
            size = 0
            while size <= MAX_SOURCE_BYTES:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


@model
class CommandSource(InventorySource):
    """An executable (absolute path, then its arguments) that prints the packages as JSON."""

    argv: tuple[str, ...]
    timeout: float = DEFAULT_COMMAND_TIMEOUT

    def describe(self) -> str:
        return f"command {self.argv[0]}"

    async def read(self) -> Packages:
        executable = Path(self.argv[0])
        if not executable.is_absolute():
            raise InventoryError(f"{self.describe()}: the command must be an absolute path")
        try:
            open_executable(executable, what="inventory command").close()
        except UntrustedPath as exc:
            raise InventoryError(f"{self.describe()}: {exc.reason}") from None
        except OSError as exc:
            raise InventoryError(f"{self.describe()}: {exc.strerror or exc}") from None
        # Executed by its name, which no other account can change (checked just above).
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": COMMAND_PATH, "LANG": "C.UTF-8"},
            cwd="/",
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        try:
            async with asyncio.timeout(self.timeout):
                output, errors, code = await asyncio.gather(
                    _read_bounded(process.stdout, MAX_SOURCE_BYTES + 1),
                    _read_tail(process.stderr, _STDERR_TAIL),
                    process.wait(),
                )
        except TimeoutError:
            raise InventoryError(
                f"{self.describe()}: did not finish within {self.timeout:g} s (killed)"
            ) from None
        finally:
            if process.returncode is None:
                # its whole session; only while it is not reaped, so the group id is still its
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if code != 0:
            tail = errors.decode("utf-8", "replace").strip()
            raise InventoryError(f"{self.describe()}: exited with code {code}: {tail}")
        return self._parse(output)


async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> bytes:
    """At most `limit` bytes; the rest is read and dropped so the command never blocks."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept)


async def _read_tail(stream: asyncio.StreamReader, size: int) -> bytes:
    tail = b""
    while chunk := await stream.read(65536):
        tail = (tail + chunk)[-size:]
    return tail


@model
class PluginSource(InventorySource):
    """`package.module:name`: a function (plain or async) returning the packages, or a class
    whose instance has such a `read` method."""

    spec: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"plugin {self.spec}"

    async def read(self) -> Packages:
        module_name, _, attribute = self.spec.partition(":")
        try:
            target: Any = getattr(importlib.import_module(module_name), attribute)
        except Exception as exc:
            raise InventoryError(
                f"{self.describe()}: cannot load it: {type(exc).__name__}: {exc}"
            ) from exc
        try:
            if inspect.isclass(target):
                instance: Any = target(**self.settings)
                target = instance.read
            result = target()
            if inspect.isawaitable(result):
                result = await result
        except InventoryError:
            raise
        except Exception as exc:
            raise InventoryError(f"{self.describe()}: {type(exc).__name__}: {exc}") from exc
        return parse_packages(result, self.describe())


def sources_from_config(data: Any, where: str = "inventory.sources") -> list[InventorySource]:
    """The configuration's list: each item has exactly one of `file: PATH`, `command: [ARGV]`
    (with `timeout_seconds`), `plugin: "pkg.mod:name"` (with `settings`)."""
    if data is None:
        return []
    if not isinstance(data, list):
        raise InventoryError(f"{where}: expected a list of sources")
    return [_source(item, f"{where}[{index}]") for index, item in enumerate(data)]


def _source(item: Any, where: str) -> InventorySource:
    kinds = [k for k in ("file", "command", "plugin") if isinstance(item, Mapping) and k in item]
    if len(kinds) != 1:
        raise InventoryError(f"{where}: expected exactly one of file, command, plugin")
    kind = kinds[0]
    allowed = {"file": {"file"}, "command": {"command", "timeout_seconds"}}.get(
        kind, {"plugin", "settings"}
    )
    unknown = sorted(str(k) for k in item if k not in allowed)
    if unknown:
        raise InventoryError(f"{where}.{unknown[0]}: unknown key for a {kind} source")
    value = item[kind]
    if kind == "file":
        if not isinstance(value, str) or not value.startswith("/"):
            raise InventoryError(f"{where}.file: expected an absolute path")
        return FileSource(Path(value))
    if kind == "command":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(a, str) and "\x00" not in a for a in value)
        ):
            raise InventoryError(f"{where}.command: expected a list of strings (no shell)")
        timeout = item.get("timeout_seconds", DEFAULT_COMMAND_TIMEOUT)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 3600
        ):
            raise InventoryError(f"{where}.timeout_seconds: expected a number from 0 to 3600")
        return CommandSource(tuple(value), float(timeout))
    if not isinstance(value, str) or value.count(":") != 1:
        raise InventoryError(f'{where}.plugin: expected "package.module:name"')
    settings = item.get("settings") or {}
    if not isinstance(settings, Mapping):
        raise InventoryError(f"{where}.settings: expected a mapping")
    return PluginSource(value, dict(settings))
