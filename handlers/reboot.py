"""`reboot`: ask the agent to reboot the device, and succeed once it is back.

The agent, not the handler, reboots (with `jobs.reboot_command`), after recording that the job
awaits a reboot; after the boot the engine checks that the boot id changed and calls `run`
again with `ctx.rebooted` true. So no lock file is needed, unlike the Device Client's reboot.sh.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs_agent_handlers.api import JobContext


class RebootHandler:
    name = "reboot"
    resumable = False

    async def run(self, ctx: JobContext) -> Mapping[str, Any] | None:
        if ctx.rebooted:
            return {"reason": "the device rebooted"}
        ctx.progress(None, "rebooting")
        ctx.request_reboot()
        return None
