"""What the service hands out: deliveries and results to callers, events to listeners.

`JobExecutionsChanged` and `NextJobExecutionChanged` become `notify` and `notify-next`;
`LifecycleEvent` becomes a message on `$aws/events/job/{jobId}/{operation}` or
`$aws/events/jobExecution/{jobId}/{operation}` ("Jobs events"), produced only while the
account's event configuration enables JOB or JOB_EXECUTION events (UpdateEventConfigurations).

The four made per request are immutable named tuples, not frozen dataclasses: a frozen
dataclass's `__init__` sets each field through `object.__setattr__`, a call the profilers'
call counts do not show (a wrapper, not a built-in function), and it costs about twice what
a named tuple does to build (0.79 against 0.38 us for a `Delivery` here). Six are built per
drained job.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from jobs_agent.emulator.model import Execution, ExecutionSummary, Job


class Delivery(NamedTuple):
    """An execution as handed to a device, with its document freshly re-signed."""

    execution: Execution
    document: dict[str, Any]
    document_text: str
    seconds_before_timed_out: int | None


class UpdateResult(NamedTuple):
    execution: Execution
    document: dict[str, Any] | None
    document_text: str | None


class JobExecutionsChanged(NamedTuple):
    thing_name: str
    namespace: str | None
    in_progress: list[ExecutionSummary]
    queued: list[ExecutionSummary]
    timestamp: float


class NextJobExecutionChanged(NamedTuple):
    thing_name: str
    namespace: str | None
    execution: Delivery | None
    timestamp: float


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One message of the "Jobs events" page."""

    topic: str
    payload: dict[str, Any]


ServiceEvent = JobExecutionsChanged | NextJobExecutionChanged | LifecycleEvent
EventListener = Callable[[list[ServiceEvent]], None]

JOB = "JOB"
JOB_EXECUTION = "JOB_EXECUTION"


def job_event(
    job: Job, operation: str, now: float, counts: dict[str, int] | None = None
) -> LifecycleEvent:
    """`$aws/events/job/{jobId}/{completed|canceled|deleted|cancellation_in_progress|
    deletion_in_progress}` with the page's payload (times in milliseconds, as its examples)."""
    status = {
        "completed": "COMPLETED",
        "canceled": "CANCELED",
        "deleted": "DELETED",
        "cancellation_in_progress": "CANCELLATION_IN_PROGRESS",
        "deletion_in_progress": "DELETION_IN_PROGRESS",
    }[operation]
    payload: dict[str, Any] = {
        "eventType": JOB,
        "eventId": str(uuid.uuid4()),
        "timestamp": int(now),
        "operation": operation,
        "jobId": job.job_id,
        "status": status,
        "targetSelection": job.target_selection,
        "targets": list(job.targets),
        "createdAt": int(job.created_at * 1000),
        "lastUpdatedAt": int(job.last_updated_at * 1000),
    }
    if job.description:
        payload["description"] = job.description
    if operation == "completed":
        payload["completedAt"] = int((job.completed_at or now) * 1000)
        payload["jobProcessDetails"] = dict(counts or {})
    elif job.comment:
        payload["comment"] = job.comment
    return LifecycleEvent(f"$aws/events/job/{job.job_id}/{operation}", payload)


def execution_event(
    execution: Execution, operation: str, now: float, thing_arn: str
) -> LifecycleEvent:
    """`$aws/events/jobExecution/{jobId}/{succeeded|failed|...|removed|deleted}`."""
    payload: dict[str, Any] = {
        "eventType": JOB_EXECUTION,
        "eventId": str(uuid.uuid4()),
        "timestamp": int(now),
        "operation": operation,
        "jobId": execution.job_id,
        "thingArn": thing_arn,
        "status": execution.status.value if operation != "deleted" else "DELETED",
    }
    if execution.status_details:
        payload["statusDetails"] = dict(execution.status_details)
    return LifecycleEvent(f"$aws/events/jobExecution/{execution.job_id}/{operation}", payload)
