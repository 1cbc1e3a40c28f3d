"""The `inventory:` section, declared and checked by its owner (the configuration module routes
it here and adds the line to an error).

    inventory:
      sources:                       # read in order; a later source overrides an earlier one
        - file: /etc/device/packages.json
        - command: [/usr/local/bin/firmware-version, --json]
          timeout_seconds: 10
        - plugin: "vendor_inventory:read"
      report_on_start: true          # report the inventory to `$package` once connected
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs_agent.datamodel import model
from jobs_agent.inventory.reading import InventoryError, InventorySource

KEYS = ("sources", "report_on_start")


@model
class InventorySettings:
    """The `inventory:` section: where the software inventory is read and whether it is reported."""

    sources: tuple[InventorySource, ...] = ()
    """Where the device learns what is installed, after the agent's own record of its jobs."""
    report_on_start: bool = True
    """Report the inventory to the reserved named shadow `$package` once connected."""


def inventory_settings(data: Any, where: str = "inventory") -> InventorySettings:
    """The section's settings; `InventoryError` naming the key otherwise."""
    if data is None:
        return InventorySettings()
    if not isinstance(data, Mapping):
        raise InventoryError(f"{where}: expected a mapping of settings")
    for key in data:
        if key not in KEYS:
            raise InventoryError(f"{where}.{key}: unknown key (expected one of {', '.join(KEYS)})")
    report = data.get("report_on_start", True)
    if not isinstance(report, bool):
        raise InventoryError(f"{where}.report_on_start: expected true or false, got {report!r}")
    if data.get("sources") is None:
        return InventorySettings((), report)
    # The sources' code is loaded only for a configuration that lists some (issue 18).
    from jobs_agent.inventory.sources import sources_from_config

    sources = sources_from_config(data["sources"], f"{where}.sources")
    return InventorySettings(tuple(sources), report)
