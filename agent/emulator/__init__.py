"""A local AWS IoT Jobs service (with the Device Shadow service, the Software Package Catalog
and MQTT-based file delivery of the same account): the state machines, their MQTT front ends and
the HTTP planes.

Entry points: `EmbeddedEmulator` (in-process, on a `LocalBus`), `Emulator` (any transport),
`JobsService` (the pure core), `ManualClock` (tests). See docs/emulator.md.

The names below are imported on first use (PEP 562): `jobs_agent.emulator.readings`, which the
CLI reads for `sim serve --help` on every start of the agent, must not import the whole service
(45 ms and megabytes the agent itself never uses, issue 18).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs_agent.emulator.clock import Clock, ManualClock, SystemClock
    from jobs_agent.emulator.model import (
        ExecutionStatus,
        HistoryEntry,
        JobStatus,
        RetryCriterion,
        Source,
    )
    from jobs_agent.emulator.service import ControlError, JobsService, ServiceError

_HOMES = {
    "Clock": "clock",
    "ManualClock": "clock",
    "SystemClock": "clock",
    "ExecutionStatus": "model",
    "HistoryEntry": "model",
    "JobStatus": "model",
    "RetryCriterion": "model",
    "Source": "model",
    "ControlError": "service",
    "JobsService": "service",
    "ServiceError": "service",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value


__all__ = [
    "Clock",
    "ControlError",
    "ExecutionStatus",
    "HistoryEntry",
    "JobStatus",
    "JobsService",
    "ManualClock",
    "RetryCriterion",
    "ServiceError",
    "Source",
    "SystemClock",
]
