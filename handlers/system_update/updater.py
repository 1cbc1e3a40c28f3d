"""The one interface an A/B system update is driven through, whatever updater is below it.

An A/B device has two copies of its system, slot A and slot B; it runs one (the booted slot)
while the other (the inactive slot) is free to be overwritten. An update is always the same
sequence, and each step is one method here, so the `system-update` handler (handler.py) persists
its phase between them and resume after a crash or a reboot:

1. `install(bundle)` writes the signed bundle into the inactive slot. The boot order is not
   touched: until `activate`, a failure or a cancellation leaves the device as it was.
2. `activate(slot)` asks the bootloader to boot that slot next, *on trial*: its try counter is
   armed, so a system that never comes up is abandoned by the bootloader itself.
3. After the reboot, `booted_slot()` (or `fell_back(slot)`) tells whether the new slot runs.
4. `mark_good()` commits the booted slot (the bootloader stops counting tries), or
   `mark_bad(slot)` gives it up: the next boot goes to the other slot.

Slots are named by their boot names (`A`, `B`: what the bootloader and the kernel command line
call them), not by the updater's own names (RAUC's `rootfs.1`), so that a report reads the same
with either updater.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

Progress = Callable[[float | None, str], None]
"""`progress(percent or None, message)`; called from the event loop, must not block."""

OUTPUT_TAIL_CHARS = 2048
"""How much of an updater's own words an error keeps (its last characters)."""


class UpdaterError(Exception):
    """An updater command failed, with what was asked, why, and the updater's own words.

    `str()` is one line for statusDetails: `rauc install: exited with code 1: signature
    verification failed: ...`. `output` keeps the tail of what the updater printed, for the log.
    """

    def __init__(self, action: str, reason: str, detail: str = "", output: str = "") -> None:
        self.action = action
        self.reason = reason
        self.detail = detail
        self.output = output[-OUTPUT_TAIL_CHARS:]
        message = f"{action}: {reason}"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class SystemUpdater(ABC):
    """What the system-update handler needs from RAUC or SWUpdate (module docstring)."""

    name: ClassVar[str]
    """The `updater` value of a job document: `rauc` or `swupdate`."""
    notice: Callable[[str], None] | None = None
    """Told (one line) when a call waits for something else to finish first (RAUC busy with an
    install that outlived its client): the handler passes it on as progress."""

    @abstractmethod
    async def booted_slot(self) -> str:
        """The slot the running system was booted from."""

    @abstractmethod
    async def inactive_slot(self) -> str:
        """The slot an update is written to: the other slot of the booted one's pair."""

    @abstractmethod
    async def install(self, bundle: Path, progress: Progress) -> str:
        """Verify the bundle's signature and write it into the inactive slot; return that slot.

        Raises `UpdaterError` (a bundle signed by an untrusted key, made for another device,
        or damaged) with the updater's reason; the boot order is left as it was either way.
        """

    @abstractmethod
    async def activate(self, slot: str) -> None:
        """Boot `slot` at the next boot, on trial (the bootloader's try counter armed)."""

    @abstractmethod
    async def mark_good(self) -> None:
        """Commit the booted slot: the bootloader keeps booting it without counting tries."""

    @abstractmethod
    async def mark_bad(self, slot: str) -> None:
        """Never boot `slot` again until it is activated anew: the next boot takes the other."""

    async def fell_back(self, activated: str) -> bool:
        """After a reboot into `activated`: true when the bootloader booted the other slot.

        That happens when the new system never came far enough to commit itself (its tries ran
        out: kernel panic, hang, reset by a watchdog) or was marked bad before the reboot.
        """
        return await self.booted_slot() != activated
