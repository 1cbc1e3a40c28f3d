"""The wall clock that deferrals and maintenance windows are decided by.

`now()` is `time.time()`, unless `JOBS_AGENT_CLOCK_FILE` names a file: then its content (epoch
seconds) is "now". That is a test seam, like `JOBS_AGENT_CRASH_AT`: it lets a test move a real
`jobs-agent run` process to the minute before a maintenance window and then into it, without
waiting real hours. Only these decisions read it: a step's timeout, the heartbeats and every
other duration run on the monotonic clock. Unset in production (the unit file does not set it,
and only root can change the environment of the root daemon).
"""

from __future__ import annotations

import os
import time

ENV_VAR = "JOBS_AGENT_CLOCK_FILE"


def now() -> float:
    path = os.environ.get(ENV_VAR)
    if not path:
        return time.time()
    try:
        with open(path, encoding="ascii") as file:
            return float(file.read().strip())
    except (OSError, ValueError):
        return time.time()
