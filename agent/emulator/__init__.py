"""A local AWS IoT Jobs service (with the Device Shadow service, the Software Package Catalog
and MQTT-based file delivery of the same account): the state machines, their MQTT front ends and
the HTTP planes.

Entry points: `EmbeddedEmulator` (in-process, on a `LocalBus`), `Emulator` (any transport),
`JobsService` (the pure core), `ManualClock` (tests). See docs/emulator.md.
"""

from jobs_agent.emulator.clock import Clock, ManualClock, SystemClock
from jobs_agent.emulator.model import (
    ExecutionStatus,
    HistoryEntry,
    JobStatus,
    RetryCriterion,
    Source,
)
from jobs_agent.emulator.service import ControlError, JobsService, ServiceError

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
