"""RAUC (https://rauc.io) through its command line: `rauc install` and `rauc status`.

The `rauc` command of a Debian build (1.8) is a client of the RAUC service on the system D-Bus:
`install`, `status` and the `mark-*` commands all fail ("Could not connect") unless
`rauc service` runs, which is how RAUC is meant to run on a device (rauc.service). The service
decides the target slot itself (the inactive one of the booted slot's class), verifies the
bundle against its keyring and talks to the bootloader; this module only asks and reports.

RAUC activates a slot right after installing it unless its system.conf says
`activate-installed=false`. The A/B handler needs the two steps apart (cancellation stays possible
until the switch), so the device's system.conf must carry that setting; `activate` then does
`rauc status mark-active`.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent_handlers.system_update.command import CommandResult, run_command
from jobs_agent_handlers.system_update.updater import Progress, SystemUpdater, UpdaterError

_PROGRESS_LINE = re.compile(r"^\s*(\d{1,3})% (.+)$")
_LAST_ERROR = "LastError: "
_BUSY = "already processing a different method"
_BUSY_NOTICE = "RAUC is busy with an earlier request (an install that outlived its client); waiting"
BUSY_RETRY_FIRST = 0.2
BUSY_RETRY_MAX = 5.0


@model
class RaucSlot:
    name: str
    """RAUC's name for the slot, `class.index` (`rootfs.1`)."""
    slot_class: str
    bootname: str | None
    parent: str | None
    boot_status: str | None
    """What the bootloader says: `good` or `bad` (None where RAUC could not ask)."""


@model
class RaucStatus:
    """The part of `rauc status --output-format=json` the updater reads."""

    booted: str | None
    """The booted slot's bootname, or None when RAUC could not tell."""
    primary: str | None
    """RAUC's name of the slot the bootloader boots next."""
    slots: tuple[RaucSlot, ...]

    @classmethod
    def parse(cls, text: str) -> RaucStatus:
        """Read the JSON; anything not shaped as RAUC 1.x prints it raises ValueError."""
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("slots"), list):
            raise ValueError("no list of slots")
        slots = []
        for entry in data["slots"]:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError("a slot entry is not a one-key object")
            ((name, fields),) = entry.items()
            if not isinstance(fields, dict) or not isinstance(fields.get("class"), str):
                raise ValueError(f"slot {name}: no class")
            slots.append(
                RaucSlot(
                    name=name,
                    slot_class=fields["class"],
                    bootname=_optional_str(fields, "bootname"),
                    parent=_optional_str(fields, "parent"),
                    boot_status=_optional_str(fields, "boot_status"),
                )
            )
        return cls(
            booted=_optional_str(data, "booted"),
            primary=_optional_str(data, "boot_primary"),
            slots=tuple(slots),
        )

    def by_bootname(self, bootname: str) -> RaucSlot:
        for slot in self.slots:
            if slot.bootname == bootname and slot.parent is None:
                return slot
        names = ", ".join(sorted(s.bootname for s in self.slots if s.bootname))
        raise ValueError(f"no slot has the bootname {bootname!r} (bootnames: {names})")

    def other(self) -> RaucSlot:
        """The bootable slot of the booted one's class that is not booted (RAUC's `other`)."""
        if self.booted is None:
            raise ValueError(
                "RAUC cannot tell the booted slot (no rauc.slot= or root= on the kernel "
                "command line matches a slot)"
            )
        booted = self.by_bootname(self.booted)
        others = [
            slot
            for slot in self.slots
            if slot.slot_class == booted.slot_class
            and slot.parent is None
            and slot.bootname is not None
            and slot is not booted
        ]
        if len(others) != 1:
            raise ValueError(
                f"class {booted.slot_class} has {len(others) + 1} bootable slots; "
                "an A/B update needs exactly two"
            )
        return others[0]


def _optional_str(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a string, got {type(value).__name__}")
    return value


class RaucUpdater(SystemUpdater):
    """Drives RAUC through `rauc` (module docstring).

    `dbus_address` points the command at another system bus than the default one (tests run
    a private bus and service); `command` is the argv prefix that runs `rauc`.
    """

    name = "rauc"

    def __init__(
        self,
        *,
        command: Sequence[str] = ("rauc",),
        dbus_address: str | None = None,
        install_timeout: float = 3600.0,
        command_timeout: float = 60.0,
    ) -> None:
        self.command = tuple(command)
        self.install_timeout = install_timeout
        self.command_timeout = command_timeout
        self._env = {"DBUS_SYSTEM_BUS_ADDRESS": dbus_address} if dbus_address else {}

    async def status(self, on_busy: Callable[[], None] | None = None) -> RaucStatus:
        result = await self._run("rauc status", "status", "--output-format=json", on_busy=on_busy)
        if result.returncode != 0:
            raise result.failure()
        try:
            return RaucStatus.parse(result.stdout)
        except ValueError as exc:
            raise UpdaterError("rauc status", "unexpected output", str(exc), result.stdout) from exc

    async def booted_slot(self) -> str:
        status = await self.status()
        if status.booted is None:
            raise UpdaterError("rauc status", "RAUC cannot tell the booted slot")
        return status.booted

    async def inactive_slot(self) -> str:
        other = self._checked(await self.status(), lambda status: status.other())
        assert other.bootname is not None
        return other.bootname

    async def install(self, bundle: Path, progress: Progress) -> str:
        def waiting() -> None:
            progress(None, _BUSY_NOTICE)

        other = self._checked(await self.status(on_busy=waiting), lambda status: status.other())
        assert other.bootname is not None
        target = other.bootname
        last_error: list[str] = []

        def on_line(line: str) -> None:
            if line.startswith(_LAST_ERROR):
                last_error.append(line[len(_LAST_ERROR) :])
            elif match := _PROGRESS_LINE.match(line):
                progress(float(min(int(match[1]), 100)), match[2])

        result = await self._run(
            "rauc install",
            "install",
            str(bundle),
            timeout=self.install_timeout,
            on_line=on_line,
            on_busy=waiting,
        )
        if result.returncode != 0:
            raise result.failure(last_error[-1] if last_error else "")
        return target

    async def activate(self, slot: str) -> None:
        await self._mark("active", slot)

    async def mark_good(self) -> None:
        await self._mark("good", None)

    async def mark_bad(self, slot: str) -> None:
        await self._mark("bad", slot)

    async def _mark(self, state: str, bootname: str | None) -> None:
        """`rauc status mark-STATE` for a slot by its bootname, or for the booted slot."""
        identifier = "booted"
        if bootname is not None:
            identifier = self._checked(
                await self.status(), lambda status: status.by_bootname(bootname)
            ).name
        result = await self._run(f"rauc mark-{state}", "status", f"mark-{state}", identifier)
        if result.returncode != 0:
            raise result.failure()

    async def _run(
        self,
        action: str,
        *arguments: str,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
        on_busy: Callable[[], None] | None = None,
    ) -> CommandResult:
        """One rauc command; asked again while the service answers that it is busy.

        The service goes on with an installation whose client was killed (an agent killed
        mid-install): until it is done, every request, `status` included, is refused with
        "already processing a different method". That is waited out, for at most
        `install_timeout` (what that installation may take)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.install_timeout
        delay = BUSY_RETRY_FIRST
        while True:
            result = await run_command(
                [*self.command, *arguments],
                action=action,
                timeout=self.command_timeout if timeout is None else timeout,
                env=self._env,
                on_line=on_line,
            )
            busy = _BUSY in (result.stdout + result.stderr).lower()
            if result.returncode == 0 or not busy or loop.time() + delay > deadline:
                return result
            if on_busy is not None:
                on_busy()
            elif self.notice is not None:
                self.notice(_BUSY_NOTICE)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BUSY_RETRY_MAX)

    @staticmethod
    def _checked(status: RaucStatus, pick: Callable[[RaucStatus], RaucSlot]) -> RaucSlot:
        try:
            return pick(status)
        except ValueError as exc:
            raise UpdaterError("rauc status", str(exc)) from exc
