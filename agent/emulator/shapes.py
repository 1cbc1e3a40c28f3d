"""The data plane's response shapes, serialised once for both planes.

MQTT and the HTTPS data plane return the same JobExecution, JobExecutionSummary and
JobExecutionState; they differ only in how `jobDocument` travels (a JSON object over MQTT, a
string over HTTPS) and, under one reading, in `approximateSecondsBeforeTimedOut` over MQTT.
Timestamps are whole epoch seconds on both (docs/emulator.md, "Wire formats").
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from jobs_agent.emulator.events import Delivery
from jobs_agent.emulator.model import Execution, ExecutionSummary


class DocumentAs(Enum):
    OBJECT = "object"
    """MQTT"""
    STRING = "string"
    """HTTPS"""
    OMITTED = "omitted"


_COMPACT = json.JSONEncoder(separators=(",", ":"))


def compact(obj: Any) -> str:
    """Compact JSON; one encoder for all (`json.dumps` with separators builds one per call)."""
    return _COMPACT.encode(obj)


def seconds(value: float | None) -> int | None:
    """Whole seconds since the epoch, as AWS sends them and awsiotsdk's models expect."""
    return None if value is None else int(value)


def omit_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def summary(e: Execution | ExecutionSummary) -> dict[str, Any]:
    """JobExecutionSummary."""
    return omit_none(
        jobId=e.job_id,
        queuedAt=seconds(e.queued_at),
        startedAt=seconds(e.started_at),
        lastUpdatedAt=seconds(e.last_updated_at),
        versionNumber=e.version_number,
        executionNumber=e.execution_number,
    )


def state(e: Execution) -> dict[str, Any]:
    """JobExecutionState."""
    return omit_none(
        status=e.status.value,
        statusDetails=dict(e.status_details) or None,
        versionNumber=e.version_number,
    )


def execution(
    delivery: Delivery, document: DocumentAs, seconds_before_timed_out: bool = True
) -> dict[str, Any]:
    """JobExecution."""
    e = delivery.execution
    body: Any = None
    if document is DocumentAs.OBJECT:
        body = delivery.document
    elif document is DocumentAs.STRING:
        body = delivery.document_text
    return omit_none(
        jobId=e.job_id,
        thingName=e.thing_name,
        status=e.status.value,
        statusDetails=dict(e.status_details) or None,
        queuedAt=seconds(e.queued_at),
        startedAt=seconds(e.started_at),
        lastUpdatedAt=seconds(e.last_updated_at),
        versionNumber=e.version_number,
        executionNumber=e.execution_number,
        jobDocument=body,
        approximateSecondsBeforeTimedOut=delivery.seconds_before_timed_out
        if seconds_before_timed_out
        else None,
    )


def pending(in_progress: list[Execution], queued: list[Execution]) -> dict[str, Any]:
    """GetPendingJobExecutions' two lists (both planes)."""
    return {
        "inProgressJobs": [summary(e) for e in in_progress],
        "queuedJobs": [summary(e) for e in queued],
    }
