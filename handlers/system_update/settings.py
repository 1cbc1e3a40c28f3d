"""The `system_update:` section of the agent's configuration: the device's updaters and the
health checks a new system must pass before it is committed (docs/handlers.md).

Declared here, by its owner, with the rule of each key (`jobs_agent.option_rules`), so that the
configuration loader checks it and names the key and the line of a bad value. Trust and
targets come only from here, never from a job document: which keyring RAUC uses is RAUC's
system.conf, which certificate SWUpdate checks is `swupdate_ca_certificate`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs_agent.datamodel import model
from jobs_agent.option_rules import (
    Rule,
    int_in,
    list_of,
    number_in,
    option,
    optional,
    path,
    pattern,
    string,
)

if TYPE_CHECKING:
    # The updaters and health checks load when a system update runs: the configuration loader
    # reads this module at every start (issue 18).
    from jobs_agent_handlers.system_update.health import HealthChecks
    from jobs_agent_handlers.system_update.updater import SystemUpdater

_UNIT = re.compile(r"[A-Za-z0-9:_.@\\-]{1,256}")
_SLOT = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _slot_map() -> Rule:
    def convert(value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping) or len(value) != 2:
            raise ValueError
        slots: dict[str, str] = {}
        for name, device in value.items():
            if not isinstance(name, str) or not _SLOT.fullmatch(name):
                raise ValueError
            if not isinstance(device, str) or not device or any(c.isspace() for c in device):
                raise ValueError
            slots[name] = device
        return slots

    return Rule(
        "a mapping of the two slot names to their kernel command line values"
        " ({A: /dev/mmcblk0p2, B: /dev/mmcblk0p3})",
        convert,
    )


@model
class SystemUpdateSettings:
    """The `system_update:` section: the updaters' commands and files, read by the handler only."""

    # -- RAUC -------------------------------------------------------------------------------------
    rauc_command: tuple[str, ...] = option(("rauc",), list_of(string(), non_empty=True))
    rauc_dbus_address: str | None = option(None, optional(string()))
    """`DBUS_SYSTEM_BUS_ADDRESS` for the rauc client; None: the system bus."""
    # -- SWUpdate ---------------------------------------------------------------------------------
    swupdate_slots: Mapping[str, str] = option(rule=_slot_map(), factory=dict)
    swupdate_ca_certificate: Path | None = option(None, path(optional=True))
    swupdate_work_dir: Path | None = option(None, path(optional=True))
    """SWUpdate's TMPDIR (mode 0700, the agent's own); None: `state_dir/swupdate`."""
    swupdate_software_set: str = option("stable", pattern(_SLOT, "a software set name"))
    swupdate_hardware: str | None = option(None, optional(string()))
    swupdate_bootloader: str | None = option("uboot", optional(string()))
    swupdate_fw_env_config: Path | None = option(None, path(optional=True))
    swupdate_cmdline_path: Path = option(Path("/proc/cmdline"), path(optional=False))
    swupdate_cmdline_parameter: str = option("root", pattern(_SLOT, "a kernel parameter name"))
    swupdate_command: tuple[str, ...] = option(("swupdate",), list_of(string(), non_empty=True))
    fw_printenv_command: tuple[str, ...] = option(
        ("fw_printenv",), list_of(string(), non_empty=True)
    )
    fw_setenv_command: tuple[str, ...] = option(("fw_setenv",), list_of(string(), non_empty=True))
    swupdate_extra_arguments: tuple[str, ...] = option((), list_of(string()))
    # -- both -------------------------------------------------------------------------------------
    install_timeout_seconds: float = option(3600.0, number_in(1, 7 * 24 * 3600))
    max_bundle_bytes: int = option(8 << 30, int_in(1, 1 << 42))
    # -- the health checks on the new system ---------------------------------------------------
    health_commands: tuple[tuple[str, ...], ...] = option(
        (), list_of(list_of(string(), non_empty=True))
    )
    """Commands (argv lists, no shell) that must exit 0 on the new system."""
    health_units: tuple[str, ...] = option((), list_of(pattern(_UNIT, "a systemd unit name")))
    """systemd units that must be active (`systemctl is-active`)."""
    systemctl_command: tuple[str, ...] = option(("systemctl",), list_of(string(), non_empty=True))
    health_deadline_seconds: float = option(300.0, number_in(1, 86400))
    """How long the new system has, from its first verify, for one round of checks to pass."""
    health_interval_seconds: float = option(5.0, number_in(0.01, 3600))
    health_check_timeout_seconds: float = option(60.0, number_in(0.1, 3600))

    def health_checks(self) -> HealthChecks:
        from jobs_agent_handlers.system_update.health import HealthChecks

        return HealthChecks(
            commands=self.health_commands,
            units=self.health_units,
            systemctl=self.systemctl_command,
            check_timeout=self.health_check_timeout_seconds,
            interval=self.health_interval_seconds,
        )

    def updater(self, name: str, state_dir: Path) -> SystemUpdater:
        """The updater a document names; ValueError when this device has none set up for it."""
        from jobs_agent_handlers.system_update.rauc import RaucUpdater
        from jobs_agent_handlers.system_update.swupdate import SwupdateConfig, SwupdateUpdater

        if name == "rauc":
            return RaucUpdater(
                command=self.rauc_command,
                dbus_address=self.rauc_dbus_address,
                install_timeout=self.install_timeout_seconds,
            )
        if name != "swupdate":
            raise ValueError(f'updater: expected "rauc" or "swupdate", got {name!r:.40}')
        if not self.swupdate_slots or self.swupdate_ca_certificate is None:
            raise ValueError(
                "updater swupdate: this device has no system_update.swupdate_slots and"
                " system_update.swupdate_ca_certificate in its configuration"
            )
        return SwupdateUpdater(
            SwupdateConfig(
                slots=self.swupdate_slots,
                ca_certificate=self.swupdate_ca_certificate,
                work_dir=self.swupdate_work_dir or state_dir / "swupdate",
                software_set=self.swupdate_software_set,
                hardware=self.swupdate_hardware,
                bootloader=self.swupdate_bootloader,
                fw_env_config=self.swupdate_fw_env_config,
                cmdline_parameter=self.swupdate_cmdline_parameter,
                cmdline_path=self.swupdate_cmdline_path,
                swupdate_command=self.swupdate_command,
                fw_printenv_command=self.fw_printenv_command,
                fw_setenv_command=self.fw_setenv_command,
                extra_arguments=self.swupdate_extra_arguments,
                install_timeout=self.install_timeout_seconds,
            )
        )
