"""A/B system updates with the image updaters embedded Linux uses: RAUC and SWUpdate.

`SystemUpdater` (updater.py) is the interface; `RaucUpdater` and `SwupdateUpdater` drive the
real updaters' command lines. docs/system-updates.md says how each is set up on a device.

The names below load from their modules at first use (PEP 562): the configuration loader reads
`system_update.settings` at every start, which loads this package first, and a gateway that
never updates its system must not pay for the updaters (issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs_agent_handlers.system_update.rauc import RaucUpdater
    from jobs_agent_handlers.system_update.swupdate import SwupdateConfig, SwupdateUpdater
    from jobs_agent_handlers.system_update.updater import Progress, SystemUpdater, UpdaterError

_HOMES = {
    "Progress": "updater",
    "RaucUpdater": "rauc",
    "SwupdateConfig": "swupdate",
    "SwupdateUpdater": "swupdate",
    "SystemUpdater": "updater",
    "UpdaterError": "updater",
}

__all__ = [
    "Progress",
    "RaucUpdater",
    "SwupdateConfig",
    "SwupdateUpdater",
    "SystemUpdater",
    "UpdaterError",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
