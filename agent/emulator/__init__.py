"""A local AWS IoT Jobs service: the state machine, its MQTT front end and its HTTP planes.

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
