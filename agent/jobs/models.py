"""Payloads of the AWS IoT Jobs MQTT API as frozen dataclasses, for both sides of the wire.

Every model has `from_json(obj)` and `to_json()`; `to_json` gives the exact MQTT wire shape
(camelCase names as in awsiotsdk's `awsiot.iotjobs`, None fields omitted). Both come from the
fields' declarations (`jobs_agent.jobs.codec`): a model here is its fields, each with its wire
name and how it is read.

Two strictnesses, on purpose:

* Replies and events (what the device receives) are parsed tolerantly: unknown fields are
  ignored and missing optional fields become None, because the service may add fields. A
  missing or mistyped *required* field raises `ProtocolError`; the client logs and drops that
  payload instead of acting on half a message.
* Requests (what the emulator receives) are parsed strictly: a wrong type or out-of-range value
  raises `InvalidRequestError`, whose `code` is the rejection the emulator answers with.

Timestamps: the documentation says seconds since the epoch, yet some pages say milliseconds
(**uncertain**). `parse_timestamp` accepts either and normalises to float seconds: a value above
1e11 is taken as milliseconds (1e11 s is the year 5138; 1e11 ms is March 1973, so no real
timestamp of either kind falls on the wrong side). `to_json` writes seconds, as an int when whole.

Where this differs from awsiotsdk's models: timestamps stay floats (not naive local datetimes),
`jobDocument` may also arrive as a JSON string (the HTTP data plane's form), and namespaces and
our own client tokens are handled by the topics module and the client, not by the models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from jobs_agent.datamodel import model
from jobs_agent.jobs.codec import (
    Error,
    WireModel,
    flag,
    integer,
    nested,
    nested_list,
    required_text,
    text,
    wire,
)
from jobs_agent.jobs.errors import ErrorCode, InvalidRequestError, ProtocolError, parse_error_code
from jobs_agent.jobs.status_details import validate_status_details

# The vocabulary's statuses and step-timeout range, importable from here as they always were.
from jobs_agent.vocabulary import DEVICE_SETTABLE_STATUSES as DEVICE_SETTABLE_STATUSES
from jobs_agent.vocabulary import (
    JOB_ID_RE,
    MAX_CLIENT_TOKEN,
    MAX_COUNTER,
    StatusDetails,
    job_execution_status,
    step_timeout_problem,
)
from jobs_agent.vocabulary import STEP_TIMEOUT_CLEAR as STEP_TIMEOUT_CLEAR
from jobs_agent.vocabulary import STEP_TIMEOUT_MAX as STEP_TIMEOUT_MAX
from jobs_agent.vocabulary import STEP_TIMEOUT_MIN as STEP_TIMEOUT_MIN
from jobs_agent.vocabulary import TERMINAL_STATUSES as TERMINAL_STATUSES
from jobs_agent.vocabulary import JobExecutionStatus as JobExecutionStatus

MILLISECONDS_THRESHOLD = 1e11
Obj = Mapping[str, Any]


# -- the API's value types ---------------------------------------------------------------------
_NUMBER = (int, float)
"""What a timestamp may be: a tuple, where `int | float` in the check built a union of the two
at every call (issue 18)."""


def parse_timestamp(value: object) -> float | None:
    """Seconds or milliseconds since the epoch -> float seconds; None for absent/unusable."""
    if isinstance(value, bool) or not isinstance(value, _NUMBER):
        return None
    seconds = float(value)
    if seconds > MILLISECONDS_THRESHOLD:
        seconds /= 1000.0
    return seconds


def _timestamp(o: Obj, key: str, error: Error) -> float | None:
    """`parse_timestamp` of `o[key]`, in one call (nine timestamps per job; issue 18)."""
    value = o.get(key)
    if type(value) is not int and (  # plain JSON's integer asked first (issue 18)
        value is None or isinstance(value, bool) or not isinstance(value, _NUMBER)
    ):
        return None
    seconds = float(value)
    return seconds / 1000.0 if seconds > MILLISECONDS_THRESHOLD else seconds


def _seconds(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _job_id(o: Obj, key: str, error: Error) -> str:
    """A reply's `jobId`: the device files, topics and logs are named after it, so one that the
    service could not have issued (`../x`, surrogates, 65 characters) is a protocol error."""
    value = o.get(key)
    if type(value) is not str:  # plain JSON's text asked first: two calls fewer (issue 18)
        value = required_text(o, key, error)
    if JOB_ID_RE.fullmatch(value) is None:
        raise ProtocolError(f"'jobId' {value[:80]!r} is not a valid job id")
    return value


def _counter(minimum: int) -> Any:
    """An integer in a reply that identifies an execution or its version: within the range the
    service uses, so a forged -1 or 2**64 cannot name an execution the service never had."""

    def read(o: Obj, key: str, error: Error) -> int | None:
        value = o.get(key)
        if type(value) is not int:  # plain JSON's integer asked first: a call fewer (issue 18)
            value = integer(o, key, ProtocolError)
        if value is not None and not minimum <= value <= MAX_COUNTER:
            raise ProtocolError(f"{key!r} must be from {minimum} to {MAX_COUNTER}, got {value}")
        return value

    return read


def _status(o: Obj, key: str, error: Error) -> JobExecutionStatus:
    value = o.get(key)
    if type(value) is not str:  # plain JSON's text asked first: two calls fewer (issue 18)
        value = required_text(o, key, error)
    try:
        return job_execution_status(value)
    except ValueError:
        raise error(f"{key!r} has unknown status {value!r}") from None


def _status_value(status: JobExecutionStatus) -> str:
    return str(status)  # a StrEnum's value, without `.value`'s two Python calls (issue 18)


def _details(o: Obj, key: str, error: Error) -> dict[str, str] | None:
    value = o.get(key)
    if value is None:
        return None
    if not (type(value) is dict or isinstance(value, Mapping)) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise error(f"{key!r} must be an object of strings")
    return dict(value)


def _request_details(o: Obj, key: str, error: Error) -> StatusDetails | None:
    value = o.get(key)
    if value is None:
        return None
    problem = validate_status_details(value)
    if problem is not None:
        raise InvalidRequestError(f"statusDetails: {problem}")
    return StatusDetails(value)  # validated here, once: the service takes it as it is


def _document(o: Obj, key: str, error: Error) -> dict[str, Any] | None:
    value = o.get(key)
    if value is None:
        return None
    if isinstance(value, str):  # the HTTP data plane's form; tolerated over MQTT too
        try:
            value = json.loads(value)
        except ValueError:
            raise ProtocolError("'jobDocument' is a string but not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError("'jobDocument' must be a JSON object")
    return value


def _token(o: Obj, key: str, error: Error) -> str | None:
    token = o.get(key)
    if type(token) is not str:  # plain JSON's text asked first: a call fewer (issue 18)
        token = text(o, key, error)
    if (
        token is not None
        and error is InvalidRequestError
        and not 1 <= len(token) <= MAX_CLIENT_TOKEN
    ):
        raise error(f"'clientToken' must be 1 to {MAX_CLIENT_TOKEN} characters")
    return token


def _step_timeout(*, allow_clear: bool) -> Any:
    def read(o: Obj, key: str, error: Error) -> int | None:
        value = integer(o, key, InvalidRequestError)
        if value is None:
            return None
        problem = step_timeout_problem(value, allow_clear=allow_clear)
        if problem is not None:
            raise InvalidRequestError(f"'stepTimeoutInMinutes' {problem}")
        return value

    return read


def _message(o: Obj, key: str, error: Error) -> str:
    return text(o, key, error) or ""


def _error_code(o: Obj, key: str, error: Error) -> ErrorCode | str:
    return parse_error_code(required_text(o, key, error))


def parse_payload(payload: bytes) -> Mapping[str, Any]:
    """Decode an MQTT payload to a JSON object; `InvalidRequestError(INVALID_JSON)` if it is not.

    An empty payload counts as `{}`: AWS accepts an empty get-pending request.
    """
    if not payload.strip():
        return {}
    try:
        obj = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: too deep
        raise InvalidRequestError(f"payload is not JSON: {exc}", ErrorCode.INVALID_JSON) from None
    if not isinstance(obj, dict):
        raise InvalidRequestError("payload must be a JSON object", ErrorCode.INVALID_JSON)
    return obj


TIMESTAMP = (_timestamp, _seconds)
STATUS = (_status, _status_value)
TOKEN = "clientToken"  # noqa: S105 -- a field name


# -- shared shapes -----------------------------------------------------------------------------
@model(slots=True)
class JobExecutionState(WireModel):
    """An execution's status and version, as the service returns them in replies."""

    WHAT: ClassVar[str] = "executionState"

    status: JobExecutionStatus = wire("status", *STATUS, required=True)
    status_details: dict[str, str] | None = wire("statusDetails", _details)
    version_number: int | None = wire("versionNumber", _counter(0))


@model(slots=True)
class JobExecutionSummary(WireModel):
    """One pending execution in a GetPendingJobExecutions reply or a `notify` event."""

    WHAT: ClassVar[str] = "JobExecutionSummary"

    job_id: str = wire("jobId", _job_id, required=True)
    queued_at: float | None = wire("queuedAt", *TIMESTAMP)
    started_at: float | None = wire("startedAt", *TIMESTAMP)
    last_updated_at: float | None = wire("lastUpdatedAt", *TIMESTAMP)
    version_number: int | None = wire("versionNumber", _counter(0))
    execution_number: int | None = wire("executionNumber", _counter(1))


@model(slots=True)
class JobExecution(WireModel):
    """A job execution as the device sees it. `job_document` may hold presigned URLs: never log
    it at info level, and never compare two deliveries by document (URLs are re-signed)."""

    WHAT: ClassVar[str] = "execution"

    job_id: str = wire("jobId", _job_id, required=True)
    status: JobExecutionStatus = wire("status", *STATUS, required=True)
    thing_name: str | None = wire("thingName", text)
    status_details: dict[str, str] | None = wire("statusDetails", _details)
    queued_at: float | None = wire("queuedAt", *TIMESTAMP)
    started_at: float | None = wire("startedAt", *TIMESTAMP)
    last_updated_at: float | None = wire("lastUpdatedAt", *TIMESTAMP)
    version_number: int | None = wire("versionNumber", _counter(0))
    execution_number: int | None = wire("executionNumber", _counter(1))
    job_document: dict[str, Any] | None = wire("jobDocument", _document)
    approximate_seconds_before_timed_out: int | None = wire(
        "approximateSecondsBeforeTimedOut", integer
    )


# -- events ------------------------------------------------------------------------------------
def _jobs_by_status(
    o: Obj, key: str, error: Error
) -> dict[JobExecutionStatus, tuple[JobExecutionSummary, ...]]:
    raw = o.get(key)
    if raw is None:
        return {}
    if type(raw) is not dict and not isinstance(raw, Mapping):  # the ABC's is a Python call
        raise ProtocolError(f"{key!r} must be an object")
    jobs: dict[JobExecutionStatus, tuple[JobExecutionSummary, ...]] = {}
    for name, summaries in raw.items():
        try:
            status = job_execution_status(name)  # not the enum's two Python calls (issue 18)
        except ValueError:
            continue
        if not isinstance(summaries, list):
            raise ProtocolError(f"'{key}.{name}' must be a list")
        jobs[status] = tuple([JobExecutionSummary.from_json(s) for s in summaries])
    return jobs


def _jobs_out(jobs: Mapping[JobExecutionStatus, tuple[JobExecutionSummary, ...]]) -> Any:
    return {status.value: [s.to_json() for s in summaries] for status, summaries in jobs.items()}


@model(slots=True)
class JobExecutionsChangedEvent(WireModel):
    """`notify`: the pending executions by status. Unknown status keys are skipped."""

    WHAT: ClassVar[str] = "JobExecutionsChangedEvent"

    jobs: dict[JobExecutionStatus, tuple[JobExecutionSummary, ...]] = wire(
        "jobs", _jobs_by_status, _jobs_out, required=True
    )
    timestamp: float | None = wire("timestamp", *TIMESTAMP)


@model(slots=True)
class NextJobExecutionChangedEvent(WireModel):
    """`notify-next`: the new head of the queue; `execution` None when the queue emptied."""

    WHAT: ClassVar[str] = "NextJobExecutionChangedEvent"

    execution: JobExecution | None = wire("execution", *nested(JobExecution))
    timestamp: float | None = wire("timestamp", *TIMESTAMP)


# -- replies -----------------------------------------------------------------------------------
@model(slots=True)
class ErrorResponse(WireModel):
    """A `/rejected` payload. `code` stays a plain string if the service invents a new one."""

    WHAT: ClassVar[str] = "ErrorResponse"

    code: ErrorCode | str = wire("code", _error_code, str, required=True)
    message: str = wire("message", _message, default="")
    client_token: str | None = wire(TOKEN, _token)
    timestamp: float | None = wire("timestamp", *TIMESTAMP)
    execution_state: JobExecutionState | None = wire("executionState", *nested(JobExecutionState))


@model(slots=True)
class GetPendingReply(WireModel):
    """The executions in progress and queued for the thing."""

    WHAT: ClassVar[str] = "GetPendingJobExecutions reply"

    in_progress_jobs: tuple[JobExecutionSummary, ...] = wire(
        "inProgressJobs", *nested_list(JobExecutionSummary), default=()
    )
    queued_jobs: tuple[JobExecutionSummary, ...] = wire(
        "queuedJobs", *nested_list(JobExecutionSummary), default=()
    )
    client_token: str | None = wire(TOKEN, _token)
    timestamp: float | None = wire("timestamp", *TIMESTAMP)


# The two replies that carry one execution (or none) each declare the same three fields rather
# than derive them from a model above them: a model below another dataclass is made frozen by
# dataclasses, which compiles its `__setattr__` and `__delattr__` (an `exec` each) before the
# agent's first request, where a model of its own fields has the shared pair (datamodel.py).


@model(slots=True)
class StartNextReply(WireModel):
    """`execution` is None when nothing is pending (the accepted reply has no `execution`)."""

    WHAT: ClassVar[str] = "StartNextPendingJobExecution reply"

    execution: JobExecution | None = wire("execution", *nested(JobExecution))
    client_token: str | None = wire(TOKEN, _token)
    timestamp: float | None = wire("timestamp", *TIMESTAMP)


@model(slots=True)
class DescribeReply(WireModel):
    """`execution` None is tolerated: a describe of `$next` with nothing pending."""

    WHAT: ClassVar[str] = "DescribeJobExecution reply"

    execution: JobExecution | None = wire("execution", *nested(JobExecution))
    client_token: str | None = wire(TOKEN, _token)
    timestamp: float | None = wire("timestamp", *TIMESTAMP)


@model(slots=True)
class UpdateReply(WireModel):
    """`execution_state`/`job_document` only when the request asked for them."""

    WHAT: ClassVar[str] = "UpdateJobExecution reply"

    execution_state: JobExecutionState | None = wire("executionState", *nested(JobExecutionState))
    job_document: dict[str, Any] | None = wire("jobDocument", _document)
    client_token: str | None = wire(TOKEN, _token)
    timestamp: float | None = wire("timestamp", *TIMESTAMP)


# -- requests (strict: parsed by the emulator) -------------------------------------------------
class Request(WireModel):
    __slots__ = ()
    WHAT: ClassVar[str] = "request"
    ERROR: ClassVar[Error] = InvalidRequestError


@model(slots=True)
class GetPendingRequest(Request):
    """GetPendingJobExecutions: the only field is the client token."""

    client_token: str | None = wire(TOKEN, _token)


@model(slots=True)
class StartNextRequest(Request):
    """StartNextPendingJobExecution: takes the head of the queue and sets it IN_PROGRESS."""

    status_details: dict[str, str] | None = wire("statusDetails", _request_details)
    step_timeout_in_minutes: int | None = wire(
        "stepTimeoutInMinutes", _step_timeout(allow_clear=False)
    )
    client_token: str | None = wire(TOKEN, _token)


@model(slots=True)
class DescribeRequest(Request):
    """`include_job_document` None means the MQTT default, which is true."""

    execution_number: int | None = wire("executionNumber", integer)
    include_job_document: bool | None = wire("includeJobDocument", flag)
    client_token: str | None = wire(TOKEN, _token)


@model(slots=True)
class UpdateRequest(Request):
    """UpdateJobExecution: the status (and details) the device reports for one execution."""

    status: JobExecutionStatus = wire("status", *STATUS, required=True)
    status_details: dict[str, str] | None = wire("statusDetails", _request_details)
    expected_version: int | None = wire("expectedVersion", integer)
    execution_number: int | None = wire("executionNumber", integer)
    include_job_execution_state: bool | None = wire("includeJobExecutionState", flag)
    include_job_document: bool | None = wire("includeJobDocument", flag)
    step_timeout_in_minutes: int | None = wire(
        "stepTimeoutInMinutes", _step_timeout(allow_clear=True)
    )
    client_token: str | None = wire(TOKEN, _token)
