"""SWUpdate (https://sbabic.github.io/swupdate) with a U-Boot style environment.

`swupdate -i BUNDLE` installs one signed .swu file and exits; no SWUpdate daemon is needed. The
bundle's sw-description names one image set per slot, `SET.A` and `SET.B` (`stable: { A: {...};
B: {...}; }`, each writing its own device), and `-e SET,SLOT` picks the inactive one. The
boot switch is this module's, not the bundle's, in the variables U-Boot's boot counting reads:

* `boot_slot` (configurable): the slot U-Boot boots. Set by `activate`, `mark_good`,
  `mark_bad`, and by the bootloader's fallback.
* `upgrade_available`: U-Boot counts boots only while it is 1. `activate` sets 1, `mark_good`
  and `mark_bad` set 0.
* `bootcount`: boots of the slot on trial so far; U-Boot adds one a boot, this module resets it.
* `bootlimit`: the tries, from the device's default environment; past it U-Boot runs
  `altbootcmd` instead of `bootcmd`.
* `ustate`: SWUpdate's update state: 1 (installed) written by SWUpdate itself, 0 (ok) by
  `mark_good`, 3 (failed) by `mark_bad` and by `altbootcmd`.

The device's `altbootcmd` must switch `boot_slot` to the other slot, set `upgrade_available=0`
and `ustate=3`, save the environment and boot: that is the fallback a never-booting slot gets.

Which slot runs is read from the kernel command line (a parameter such as `root=` whose value
names each slot's device), as the environment can already point at the next boot's slot.

SWUpdate extracts to `$TMPDIR` and makes its control sockets there; it runs here with `TMPDIR`
set to `work_dir`, a directory private to the agent: not the world-writable /tmp (where root
would write through another user's symlinks), and not the sockets of a running SWUpdate daemon
(which an `-i` run would otherwise unlink and replace).

SWUpdate before 2024.12 can end an `-i` run with exit code 1 although nothing failed: its client
thread asks for the status once before the installer has started, hears "idle" and gives up
(fixed upstream in 2024.12, commit e6b2081b). It then prints "SWUpdate was successful !" (it saw
no failure) and the process exits, whether or not the installer has finished. The installer's
own notice, "SWUPDATE successful !", comes only once the images are written and the installed
state is stored. So an exit 1 without any error line is a success when the installer's notice
is there. Otherwise what the run says is a verdict only if the installer had ended (its last
notice, "Waiting for requests...") before the client gave up: once the client gives up, the
process exits, and an installer still at work runs on while the exit handlers tear the
process down under it. It can then report errors of its own making, such as
"sw-description.sig cannot be opened" for a bundle that is fine. Such a run was cut short,
with or without errors, and it is repeated (up to `INSTALL_ATTEMPTS` runs; safe, as nothing
was activated). Measured here with 4 to 32 KiB bundles: about one run in ten exits 1, one in
forty before the installer finished; more under load. A bundle larger than the socket buffer
cannot all be sent before the installer starts, so real images rarely meet it. A post-update
command (`-p`) is not supported: its failure also ends in exit 1 after the installer's notice.
The agent reboots by itself.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path

from jobs_agent.datamodel import model
from jobs_agent_handlers.system_update.command import run_command
from jobs_agent_handlers.system_update.ubootenv import UBootEnv
from jobs_agent_handlers.system_update.updater import Progress, SystemUpdater, UpdaterError

UPGRADE_AVAILABLE = "upgrade_available"
BOOTCOUNT = "bootcount"
USTATE = "ustate"
USTATE_OK = "0"
USTATE_INSTALLED = "1"
USTATE_FAILED = "3"

_SLOT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_LOG_LINE = re.compile(r"^\[(\w+)\s*\] : (?:No )?SWUPDATE \w+ (?:\[\d+\] |:\s+)(.*)$")
_STREAM = re.compile(r"^\[install_single_image\] : Found installer for stream (\S+)")
_ERROR_PREFIX = re.compile(r"^(?:ERROR(?: \S+ : \S+ : \d+)? : )")
INSTALL_ATTEMPTS = 3
_INSTALLER_SUCCEEDED = "SWUPDATE successful ! SWUPDATE successful !"
_INSTALLER_ENDED = "No SWUPDATE running :  Waiting for requests..."
_CLIENT_SUCCEEDED = "[endupdate] : SWUpdate was successful !"
_GENERIC_ERRORS = frozenset(
    {"SWUpdate *failed* !", "Image invalid or corrupted. Not installing ...", ""}
)


SOCKETS = ("sockinstctrl", "swupdateprog")
"""What `swupdate -i` binds in its TMPDIR (`work_dir`): the control and progress sockets."""
MAX_SOCKET_PATH = 106
"""The longest socket path SWUpdate binds: one byte short of `sun_path`'s 107 (Debian's
swupdate 2022.12, tests/test_system_update_swupdate.py: 106 installs, 107 fails). A longer
`work_dir` failed every install with only "swupdate_async_start returns -1" to show for it."""


@model
class SwupdateConfig:
    """How SWUpdate and the boot environment are set up on this device."""

    slots: Mapping[str, str]
    """Slot name -> the value of `cmdline_parameter` when that slot is booted, e.g.
    `{"A": "/dev/mmcblk0p2", "B": "/dev/mmcblk0p3"}`. Exactly two; the names are also the
    modes of the bundle's image sets and the values of `slot_variable`."""
    ca_certificate: Path
    """`-k`: the certificate(s) a bundle's CMS signature must chain to."""
    work_dir: Path
    """SWUpdate's TMPDIR: created 0700 if missing, must be the agent's own (module docstring)."""
    software_set: str = "stable"
    hardware: str | None = None
    """`-H board:revision`; None: SWUpdate reads /etc/hwrevision."""
    bootloader: str | None = None
    """`-B`: the interface SWUpdate writes its `ustate` through; None: the build's default."""
    fw_env_config: Path | None = None
    """libubootenv's configuration for fw_printenv/fw_setenv; None: /etc/fw_env.config."""
    slot_variable: str = "boot_slot"
    cmdline_parameter: str = "root"
    cmdline_path: Path = Path("/proc/cmdline")
    swupdate_command: tuple[str, ...] = ("swupdate",)
    fw_printenv_command: tuple[str, ...] = ("fw_printenv",)
    fw_setenv_command: tuple[str, ...] = ("fw_setenv",)
    extra_arguments: tuple[str, ...] = field(default=())
    """More swupdate options, e.g. `("--cert-purpose", "codeSigning")`."""
    install_timeout: float = 3600.0
    command_timeout: float = 30.0

    def __post_init__(self) -> None:
        if len(self.slots) != 2:
            raise ValueError(f"slots: an A/B device has two slots, got {len(self.slots)}")
        for name, value in self.slots.items():
            if not _SLOT_NAME.match(name):
                raise ValueError(f"slots: {name!r} is not a slot name (letters, digits, _ and -)")
            if not value or any(ch.isspace() for ch in value):
                raise ValueError(f"slots.{name}: expected a command line value without spaces")
        if len(set(self.slots.values())) != 2:
            raise ValueError("slots: the two slots need different command line values")
        if not _SLOT_NAME.match(self.software_set):
            raise ValueError(f"software_set: {self.software_set!r} is not a set name")
        if self.install_timeout <= 0 or self.command_timeout <= 0:
            raise ValueError("timeouts must be positive")
        longest = len(os.fsencode(self.work_dir / max(SOCKETS, key=len)))
        if longest > MAX_SOCKET_PATH:
            raise ValueError(
                f"work_dir: SWUpdate binds its sockets there ({', '.join(SOCKETS)}), and only"
                f" on a path of at most {MAX_SOCKET_PATH} bytes; {self.work_dir} makes"
                f" {longest}: choose a shorter system_update.swupdate_work_dir"
            )


def kernel_parameter(cmdline: str, name: str) -> str | None:
    """The value of `name=` on a kernel command line (the last one, as the kernel takes it)."""
    value = None
    try:
        words = shlex.split(cmdline)
    except ValueError:  # an unbalanced quote: the kernel would not have split it either
        words = cmdline.split()
    for word in words:
        key, equals, rest = word.partition("=")
        if equals and key == name:
            value = rest
    return value


class SwupdateUpdater(SystemUpdater):
    """Drives `swupdate -i` and the U-Boot environment (module docstring)."""

    name = "swupdate"

    def __init__(self, config: SwupdateConfig) -> None:
        self.config = config
        self.env = UBootEnv(
            config=config.fw_env_config,
            scratch_dir=config.work_dir,
            printenv=config.fw_printenv_command,
            setenv=config.fw_setenv_command,
            timeout=config.command_timeout,
        )

    async def booted_slot(self) -> str:
        parameter = self.config.cmdline_parameter
        try:
            cmdline = self.config.cmdline_path.read_text()
        except OSError as exc:
            raise UpdaterError("kernel command line", str(exc)) from exc
        value = kernel_parameter(cmdline, parameter)
        for slot, slot_value in self.config.slots.items():
            if value == slot_value:
                return slot
        expected = ", ".join(f"{v} ({s})" for s, v in self.config.slots.items())
        raise UpdaterError(
            "kernel command line",
            f"{parameter}={value or ''} is none of the slots' values: {expected}",
        )

    async def inactive_slot(self) -> str:
        return self._other(await self.booted_slot())

    def _other(self, slot: str) -> str:
        if slot not in self.config.slots:
            raise UpdaterError("swupdate", f"no slot {slot!r}", ", ".join(self.config.slots))
        (other,) = (name for name in self.config.slots if name != slot)
        return other

    async def install(self, bundle: Path, progress: Progress) -> str:
        target = await self.inactive_slot()
        errors = ""
        for attempt in range(1, INSTALL_ATTEMPTS + 1):
            installed, errors = await self._install_once(bundle, target, progress)
            if installed:
                return target
            if attempt < INSTALL_ATTEMPTS:
                progress(None, "swupdate exited before its installer finished; installing again")
        detail = "a race of SWUpdate before 2024.12 (docs/system-updates.md)"
        raise UpdaterError(
            "swupdate",
            f"ended before its installer reported a result, {INSTALL_ATTEMPTS} times",
            f"{detail}; the last run said: {errors}" if errors else detail,
        )

    async def _install_once(
        self, bundle: Path, target: str, progress: Progress
    ) -> tuple[bool, str]:
        """One `swupdate -i`: (True, "") when installed; (False, its errors) when the race cut
        it short (module docstring); raises when it failed."""
        self._empty_work_dir()
        config = self.config
        argv = [*config.swupdate_command, "-v", "-i", str(bundle)]
        argv += ["-k", str(config.ca_certificate), "-e", f"{config.software_set},{target}"]
        if config.hardware is not None:
            argv += ["-H", config.hardware]
        if config.bootloader is not None:
            argv += ["-B", config.bootloader]
        argv += config.extra_arguments
        said: list[str] = []  # the notices below, in the order SWUpdate printed them

        def on_line(line: str) -> None:
            for notice in (_INSTALLER_SUCCEEDED, _INSTALLER_ENDED, _CLIENT_SUCCEEDED):
                if line.startswith("[INFO") and line.endswith(notice):
                    said.append(notice)
            match = _LOG_LINE.match(line)
            if match is None:
                return
            level, message = match[1], match[2]
            if stream := _STREAM.match(message):
                progress(None, f"installing {stream[1]} into slot {target}")
            elif level == "INFO" and not message.startswith(("[", "Waiting for requests")):
                progress(None, message)

        result = await run_command(
            argv,
            action="swupdate",
            timeout=config.install_timeout,
            env={"TMPDIR": str(config.work_dir)},
            on_line=on_line,
        )
        errors = _errors(result.stderr)
        if not _has_errors(result.stderr) and (
            result.returncode == 0 or (result.returncode == 1 and _INSTALLER_SUCCEEDED in said)
        ):
            return True, ""
        # The installer's words count only if it had ended before the client gave up and the
        # process began to exit; otherwise they may come from its being torn down.
        if (
            result.returncode == 1
            and _CLIENT_SUCCEEDED in said
            and _INSTALLER_ENDED not in said[: said.index(_CLIENT_SUCCEEDED)]
        ):
            return False, errors
        raise result.failure(errors)

    async def activate(self, slot: str) -> None:
        self._other(slot)
        await self._write_env(
            {self.config.slot_variable: slot, UPGRADE_AVAILABLE: "1", BOOTCOUNT: "0"}
        )

    async def mark_good(self) -> None:
        booted = await self.booted_slot()
        await self._write_env(
            {
                self.config.slot_variable: booted,
                UPGRADE_AVAILABLE: "0",
                BOOTCOUNT: "0",
                USTATE: USTATE_OK,
            }
        )

    async def mark_bad(self, slot: str) -> None:
        await self._write_env(
            {
                self.config.slot_variable: self._other(slot),
                UPGRADE_AVAILABLE: "0",
                BOOTCOUNT: "0",
                USTATE: USTATE_FAILED,
            }
        )

    async def _write_env(self, values: Mapping[str, str]) -> None:
        self._private_work_dir()  # fw_setenv's script file is written there
        await self.env.write(values)

    def _private_work_dir(self) -> Path:
        """`work_dir`, created if missing; refused unless it is a directory of ours, 0700."""
        path = self.config.work_dir
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UpdaterError("swupdate", f"cannot create {path}", str(exc)) from exc
        info = os.lstat(path)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise UpdaterError(
                "swupdate",
                f"{path} must be a directory owned by the agent's user with mode 0700",
            )
        return path

    def _empty_work_dir(self) -> None:
        """Remove what earlier runs left (extracted images, scripts, sockets)."""
        for entry in os.scandir(self._private_work_dir()):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def _has_errors(stderr: str) -> bool:
    return any(line.startswith("[ERROR") for line in stderr.splitlines())


def _errors(stderr: str) -> str:
    """SWUpdate's own error messages, without the generic ones every failure ends with."""
    messages: list[str] = []
    for line in stderr.splitlines():
        match = _LOG_LINE.match(line)
        if match is None or match[1] != "ERROR":
            continue
        message = _ERROR_PREFIX.sub("", match[2]).strip()
        if message not in _GENERIC_ERRORS and message not in messages:
            messages.append(message)
    return "; ".join(messages)
