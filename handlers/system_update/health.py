"""The health checks that decide whether a new system is kept: commands and systemd units.

A check passes when its command exits 0 (`health_commands`, argv lists: no shell) or its unit
is active (`systemctl is-active --quiet UNIT`). All checks are run in rounds, every
`health_interval_seconds`, until one round passes whole (the new system may need a while to
bring its services up) or the deadline comes; what failed last is the rollback's reason.
Each command runs with the small environment of the updater commands and its own time limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from jobs_agent.datamodel import model
from jobs_agent_handlers.system_update.command import run_command
from jobs_agent_handlers.system_update.updater import UpdaterError

Clock = Callable[[], float]


@model
class HealthChecks:
    commands: tuple[tuple[str, ...], ...] = ()
    units: tuple[str, ...] = ()
    systemctl: tuple[str, ...] = ("systemctl",)
    check_timeout: float = 60.0
    interval: float = 5.0

    def argvs(self) -> list[tuple[str, list[str]]]:
        """(what it is called in a report, argv) for every check, commands first."""
        checks = [(" ".join(argv), list(argv)) for argv in self.commands]
        checks += [
            (f"unit {unit}", [*self.systemctl, "is-active", "--quiet", unit]) for unit in self.units
        ]
        return checks

    async def failure(self) -> str | None:
        """One round: None when every check passes, else why the first one failed."""
        for name, argv in self.argvs():
            try:
                result = await run_command(argv, action=name, timeout=self.check_timeout)
            except UpdaterError as exc:
                return f"health check {exc}"
            if result.returncode != 0:
                said = (result.stderr.strip() or result.stdout.strip()).splitlines()
                tail = f": {said[-1][:200]}" if said else ""
                return f"health check {name}: exited with code {result.returncode}{tail}"
        return None

    async def wait_healthy(self, remaining: float, clock: Clock) -> str | None:
        """Rounds until one passes (None) or `remaining` seconds have gone (the last reason)."""
        deadline = clock() + remaining
        while True:
            reason = await self.failure()
            if reason is None:
                return None
            left = deadline - clock()
            if left <= 0:
                return reason
            await asyncio.sleep(min(self.interval, left))
