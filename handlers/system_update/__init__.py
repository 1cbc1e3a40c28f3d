"""A/B system updates with the image updaters embedded Linux uses: RAUC and SWUpdate.

`SystemUpdater` (updater.py) is the interface; `RaucUpdater` and `SwupdateUpdater` drive the
real updaters' command lines. docs/system-updates.md says how each is set up on a device.
"""

from jobs_agent_handlers.system_update.rauc import RaucUpdater
from jobs_agent_handlers.system_update.swupdate import SwupdateConfig, SwupdateUpdater
from jobs_agent_handlers.system_update.updater import Progress, SystemUpdater, UpdaterError

__all__ = [
    "Progress",
    "RaucUpdater",
    "SwupdateConfig",
    "SwupdateUpdater",
    "SystemUpdater",
    "UpdaterError",
]
