"""The data plane's response shapes, serialised once for both planes.

MQTT and the HTTPS data plane return the same JobExecution, JobExecutionSummary and
JobExecutionState; they differ only in how `jobDocument` travels (a JSON object over MQTT, a
string over HTTPS) and, under one reading, in `approximateSecondsBeforeTimedOut` over MQTT.
Timestamps are whole epoch seconds on both (docs/emulator.md, "Wire formats"). A status is
read as its member's `_value_` (the attribute `Enum` documents): `.value` is a property, two
Python calls in enum.py per read.
"""

from __future__ import annotations

from enum import Enum
from json.encoder import encode_basestring_ascii
from typing import Any, Final

from jobs_agent.emulator.events import Delivery
from jobs_agent.emulator.model import Execution, ExecutionSummary
from jobs_agent.jsontext import compact


class DocumentAs(Enum):
    OBJECT = "object"
    """MQTT"""
    STRING = "string"
    """HTTPS"""
    OMITTED = "omitted"


AS_OBJECT: Final = DocumentAs.OBJECT
AS_STRING: Final = DocumentAs.STRING
"""Read as globals on the per-request paths (`model.QUEUED`'s note: a member read off its enum
class costs a few hundred instructions more)."""


def seconds(value: float | None) -> int | None:
    """Whole seconds since the epoch, as AWS sends them and awsiotsdk's models expect."""
    return None if value is None else int(value)


def omit_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def summary(e: Execution | ExecutionSummary) -> dict[str, Any]:
    """JobExecutionSummary. (Built field by field rather than through `omit_none` and
    `seconds`: three of these shapes are made per job, and those calls were 17 of the
    emulator's 324 per job.)"""
    body: dict[str, Any] = {"jobId": e.job_id, "queuedAt": int(e.queued_at)}
    if e.started_at is not None:
        body["startedAt"] = int(e.started_at)
    body["lastUpdatedAt"] = int(e.last_updated_at)
    body["versionNumber"] = e.version_number
    body["executionNumber"] = e.execution_number
    return body


_SUMMARY_QUEUED = (
    '{"jobId":%s,"queuedAt":%d,"lastUpdatedAt":%d,"versionNumber":%d,"executionNumber":%d}'
)
_SUMMARY_STARTED = (
    '{"jobId":%s,"queuedAt":%d,"startedAt":%d,"lastUpdatedAt":%d,"versionNumber":%d,'
    '"executionNumber":%d}'
)


def summary_text(e: ExecutionSummary) -> str:
    """`compact(summary(e))`, the same text, filled into a template: `notify` encodes the two
    summaries each job changes (the rest are cached by the front end), and the encoder's way
    (a dict built, then a call of the string escaper per key and value) took about 20 k
    instructions each, the template about half. The job id is escaped by the encoder's own
    escaper, and `%d` truncates a time as `int()` does."""
    job_id, queued_at, started_at, last_updated_at, version, number = e
    if started_at is None:
        fields = (encode_basestring_ascii(job_id), queued_at, last_updated_at, version, number)
        return _SUMMARY_QUEUED % fields
    return _SUMMARY_STARTED % (
        encode_basestring_ascii(job_id),
        queued_at,
        started_at,
        last_updated_at,
        version,
        number,
    )


def state(e: Execution) -> dict[str, Any]:
    """JobExecutionState."""
    body: dict[str, Any] = {"status": e.status._value_}
    if e.status_details:
        body["statusDetails"] = dict(e.status_details)
    body["versionNumber"] = e.version_number
    return body


def execution(
    delivery: Delivery, document: DocumentAs, seconds_before_timed_out: bool = True
) -> dict[str, Any]:
    """JobExecution (fields in the API reference's order, absent ones left out)."""
    e = delivery.execution
    body: dict[str, Any] = {
        "jobId": e.job_id,
        "thingName": e.thing_name,
        "status": e.status._value_,
    }
    if e.status_details:
        body["statusDetails"] = dict(e.status_details)
    body["queuedAt"] = int(e.queued_at)
    if e.started_at is not None:
        body["startedAt"] = int(e.started_at)
    body["lastUpdatedAt"] = int(e.last_updated_at)
    body["versionNumber"] = e.version_number
    body["executionNumber"] = e.execution_number
    if document is AS_OBJECT:
        body["jobDocument"] = delivery.document
    elif document is AS_STRING:
        body["jobDocument"] = delivery.document_text
    left = delivery.seconds_before_timed_out
    if seconds_before_timed_out and left is not None:
        body["approximateSecondsBeforeTimedOut"] = left
    return body


_EXECUTION_HEAD = '{"jobId":%s,"thingName":%s,"status":"%s"'
_EXECUTION_COUNTS = ',"lastUpdatedAt":%d,"versionNumber":%d,"executionNumber":%d'


def execution_text(
    delivery: Delivery, document: DocumentAs, seconds_before_timed_out: bool = True
) -> str:
    """`compact(execution(...))`, the same text, filled into templates: a start-next reply and
    a notify-next carry one each per job, and the encoder's way (a dict built, then a call of
    the string escaper per key and value) took about 30 k instructions each. The names are
    escaped by the encoder's own escaper, the status details and the document encoded by it,
    and `%d` truncates a time as `int()` does. A status is an upper-case name: nothing to
    escape (`test_execution_shapes` checks the text against the encoder's over generated
    executions)."""
    e = delivery.execution
    text = _EXECUTION_HEAD % (
        encode_basestring_ascii(e.job_id),
        encode_basestring_ascii(e.thing_name),
        e.status._value_,
    )
    if e.status_details:
        text += ',"statusDetails":' + compact(e.status_details)
    text += f',"queuedAt":{int(e.queued_at)}'
    if e.started_at is not None:
        text += f',"startedAt":{int(e.started_at)}'
    text += _EXECUTION_COUNTS % (e.last_updated_at, e.version_number, e.execution_number)
    if document is AS_OBJECT:
        text += ',"jobDocument":' + compact(delivery.document)
    elif document is AS_STRING:
        text += ',"jobDocument":' + encode_basestring_ascii(delivery.document_text)
    left = delivery.seconds_before_timed_out
    if seconds_before_timed_out and left is not None:
        text += f',"approximateSecondsBeforeTimedOut":{left}'
    return text + "}"


def pending(in_progress: list[Execution], queued: list[Execution]) -> dict[str, Any]:
    """GetPendingJobExecutions' two lists (both planes)."""
    return {
        "inProgressJobs": [summary(e) for e in in_progress],
        "queuedJobs": [summary(e) for e in queued],
    }
