"""Deterministic crash injection for the kill tests.

With `JOBS_AGENT_CRASH_AT=<point>` in its environment, the agent SIGKILLs itself right after the
durable write of that transition, once per state directory (a marker file records that it
happened, so the restarted agent runs on). This lets a test kill the process at an exact line
instead of guessing with sleeps. Unset in production: the check is one dict lookup.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV_VAR = "JOBS_AGENT_CRASH_AT"
POINTS = (
    "taken",  # the service moved the execution to IN_PROGRESS; nothing recorded yet
    "started",  # IN_PROGRESS accepted and recorded, handler not yet launched
    "running",  # recorded as running; the handler is about to start
    "handler_done",  # handler finished, outcome not yet recorded
    "decided",  # outcome recorded and queued in the outbox, not yet sent
    "report_accepted",  # the service accepted the outcome, not yet recorded as reported
    "reported",  # recorded as reported, the job's directory not yet removed
    "awaiting_reboot",  # reboot recorded, reboot command not yet run
    "deferred",  # the deferral recorded, not yet announced to the service
)


class CrashPoints:
    def __init__(self, state_dir: Path, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._armed = {p.strip() for p in env.get(ENV_VAR, "").split(",") if p.strip()}
        self._state_dir = state_dir

    def reached(self, point: str) -> None:
        if point not in self._armed:
            return
        marker = self._state_dir / f"crashed-at-{point}"
        if marker.exists():
            return
        marker.write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
