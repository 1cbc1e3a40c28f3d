"""The U-Boot environment through libubootenv's `fw_printenv` / `fw_setenv`.

Several variables change together (the slot to boot and its try counter): they are written in
one `fw_setenv --script` call, which libubootenv stores as one new copy of the environment (with
a redundant environment, the older copy stays valid until the new one is complete), so a power
cut never leaves the switch half done.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from jobs_agent_handlers.system_update.command import run_command
from jobs_agent_handlers.system_update.updater import UpdaterError

_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _check(name: str, value: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"not a U-Boot variable name: {name!r}")
    if any(ch in value for ch in "\n\r\0"):
        raise ValueError(f"{name}: a value cannot hold a line break or NUL")


class UBootEnv:
    """Reads and writes U-Boot variables; `config` is libubootenv's fw_env.config (its `-c`),
    by default the tools' own (/etc/fw_env.config). `scratch_dir` holds the short-lived script
    file of a write and must be private to the agent."""

    def __init__(
        self,
        *,
        config: Path | None,
        scratch_dir: Path,
        printenv: Sequence[str] = ("fw_printenv",),
        setenv: Sequence[str] = ("fw_setenv",),
        timeout: float = 30.0,
    ) -> None:
        self._config = ["-c", str(config)] if config is not None else []
        self.scratch_dir = scratch_dir
        self.printenv = tuple(printenv)
        self.setenv = tuple(setenv)
        self.timeout = timeout

    async def read(self, names: Sequence[str]) -> dict[str, str]:
        """The values of `names`; a variable that is not set is absent from the result."""
        for name in names:
            _check(name, "")
        result = await run_command(
            [*self.printenv, *self._config, *names], action="fw_printenv", timeout=self.timeout
        )
        values: dict[str, str] = {}
        for line in result.stdout.splitlines():
            name, equals, value = line.partition("=")
            # libubootenv prints an unset variable as `name=`; U-Boot's own tool fails instead.
            if equals and name in names and value:
                values[name] = value
        if result.returncode != 0 and not values:
            raise result.failure()
        return values

    async def write(self, values: Mapping[str, str]) -> None:
        """Set all `values` at once (an empty value removes the variable)."""
        for name, value in values.items():
            _check(name, value)
        script = "".join(f"{name}={value}\n" for name, value in values.items())
        descriptor, path = tempfile.mkstemp(prefix="fw_setenv.", dir=self.scratch_dir)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(script)
            result = await run_command(
                [*self.setenv, *self._config, "--script", path],
                action="fw_setenv",
                timeout=self.timeout,
            )
        finally:
            os.unlink(path)
        if result.returncode != 0:
            raise result.failure()
        # fw_setenv 0.3 exits 0 on a script line it does not understand and sets nothing: read
        # back, so that a switch that did not happen is an error and not a surprise at boot.
        stored = await self.read(list(values))
        wrong = [name for name, value in values.items() if stored.get(name, "") != value]
        if wrong:
            raise UpdaterError(
                "fw_setenv", "the environment did not take the new values", ", ".join(wrong)
            )
