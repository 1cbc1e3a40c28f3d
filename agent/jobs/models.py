"""Payloads of the AWS IoT Jobs MQTT API as frozen dataclasses, for both sides of the wire.

Every model has `from_json(obj)` and `to_json()`; `to_json` gives the exact MQTT wire shape
(camelCase names as in awsiotsdk's `awsiot.iotjobs`, None fields omitted).

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
from dataclasses import dataclass
from typing import Any, Self

from jobs_agent.jobs.errors import (
    ErrorCode,
    InvalidRequestError,
    ProtocolError,
    parse_error_code,
)
from jobs_agent.jobs.status_details import validate_status_details

# The vocabulary's statuses and step-timeout range, importable from here as they always were.
from jobs_agent.vocabulary import DEVICE_SETTABLE_STATUSES as DEVICE_SETTABLE_STATUSES
from jobs_agent.vocabulary import (
    JOB_ID_RE,
    MAX_CLIENT_TOKEN,
    MAX_COUNTER,
    StatusDetails,
    step_timeout_problem,
)
from jobs_agent.vocabulary import STEP_TIMEOUT_CLEAR as STEP_TIMEOUT_CLEAR
from jobs_agent.vocabulary import STEP_TIMEOUT_MAX as STEP_TIMEOUT_MAX
from jobs_agent.vocabulary import STEP_TIMEOUT_MIN as STEP_TIMEOUT_MIN
from jobs_agent.vocabulary import TERMINAL_STATUSES as TERMINAL_STATUSES
from jobs_agent.vocabulary import JobExecutionStatus as JobExecutionStatus

MILLISECONDS_THRESHOLD = 1e11


# -- field readers ---------------------------------------------------------------------------
# `err` is the exception class to raise: ProtocolError for replies, InvalidRequestError for
# requests, so one set of readers serves both strictnesses.
def parse_timestamp(value: object) -> float | None:
    """Seconds or milliseconds since the epoch -> float seconds; None for absent/unusable."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    if seconds > MILLISECONDS_THRESHOLD:
        seconds /= 1000.0
    return seconds


def _ts_out(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _object(obj: object, what: str, err: type[ProtocolError] = ProtocolError) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise err(f"{what} must be a JSON object, not {type(obj).__name__}")
    return obj


def _str(
    obj: Mapping[str, Any], key: str, *, required: bool = False, err: type[ProtocolError]
) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise err(f"missing required field {key!r}")
        return None
    if not isinstance(value, str):
        raise err(f"{key!r} must be a string")
    return value


def _req_str(obj: Mapping[str, Any], key: str, err: type[ProtocolError] = ProtocolError) -> str:
    value = _str(obj, key, required=True, err=err)
    if value is None:  # unreachable: _str raised; keeps the type narrow without an assert
        raise err(f"missing required field {key!r}")
    return value


def _int(obj: Mapping[str, Any], key: str, err: type[ProtocolError]) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool):
        raise err(f"{key!r} must be an integer")
    if isinstance(value, float) and value.is_integer() and err is ProtocolError:
        return int(value)  # tolerate 3.0 from the service; requests must be exact
    if not isinstance(value, int):
        raise err(f"{key!r} must be an integer")
    return value


def _job_id(obj: Mapping[str, Any]) -> str:
    """A reply's `jobId`: the device files, topics and logs are named after it, so one that the
    service could not have issued (`../x`, surrogates, 65 characters) is a protocol error."""
    value = _req_str(obj, "jobId")
    if JOB_ID_RE.fullmatch(value) is None:
        raise ProtocolError(f"'jobId' {value[:80]!r} is not a valid job id")
    return value


def _counter(obj: Mapping[str, Any], key: str, minimum: int) -> int | None:
    """An integer in a reply that identifies an execution or its version: within the range the
    service uses, so a forged -1 or 2**64 cannot name an execution the service never had."""
    value = _int(obj, key, ProtocolError)
    if value is not None and not minimum <= value <= MAX_COUNTER:
        raise ProtocolError(f"{key!r} must be from {minimum} to {MAX_COUNTER}, got {value}")
    return value


def _bool(obj: Mapping[str, Any], key: str, err: type[ProtocolError]) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise err(f"{key!r} must be a boolean")
    return value


def _status(obj: Mapping[str, Any], key: str, err: type[ProtocolError]) -> JobExecutionStatus:
    value = _req_str(obj, key, err)
    try:
        return JobExecutionStatus(value)
    except ValueError:
        raise err(f"{key!r} has unknown status {value!r}") from None


def _details(obj: Mapping[str, Any], key: str, err: type[ProtocolError]) -> dict[str, str] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise err(f"{key!r} must be an object of strings")
    return dict(value)


def _document(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    value = obj.get("jobDocument")
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


def _token(obj: Mapping[str, Any], err: type[ProtocolError]) -> str | None:
    token = _str(obj, "clientToken", err=err)
    if token is not None and err is InvalidRequestError and not 1 <= len(token) <= MAX_CLIENT_TOKEN:
        raise err(f"'clientToken' must be 1 to {MAX_CLIENT_TOKEN} characters")
    return token


def _omit_none(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


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


# -- shared shapes -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class JobExecutionState:
    status: JobExecutionStatus
    status_details: dict[str, str] | None = None
    version_number: int | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "executionState")
        status = _status(o, "status", ProtocolError)
        return cls(
            status=status,
            status_details=_details(o, "statusDetails", ProtocolError),
            version_number=_counter(o, "versionNumber", 0),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            status=self.status.value,
            statusDetails=self.status_details,
            versionNumber=self.version_number,
        )


@dataclass(frozen=True, slots=True)
class JobExecutionSummary:
    job_id: str
    queued_at: float | None = None
    started_at: float | None = None
    last_updated_at: float | None = None
    version_number: int | None = None
    execution_number: int | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "JobExecutionSummary")
        return cls(
            job_id=_job_id(o),
            queued_at=parse_timestamp(o.get("queuedAt")),
            started_at=parse_timestamp(o.get("startedAt")),
            last_updated_at=parse_timestamp(o.get("lastUpdatedAt")),
            version_number=_counter(o, "versionNumber", 0),
            execution_number=_counter(o, "executionNumber", 1),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            jobId=self.job_id,
            queuedAt=None if self.queued_at is None else _ts_out(self.queued_at),
            startedAt=None if self.started_at is None else _ts_out(self.started_at),
            lastUpdatedAt=None if self.last_updated_at is None else _ts_out(self.last_updated_at),
            versionNumber=self.version_number,
            executionNumber=self.execution_number,
        )


@dataclass(frozen=True, slots=True)
class JobExecution:
    """A job execution as the device sees it. `job_document` may hold presigned URLs: never log
    it at info level, and never compare two deliveries by document (URLs are re-signed)."""

    job_id: str
    status: JobExecutionStatus
    thing_name: str | None = None
    status_details: dict[str, str] | None = None
    queued_at: float | None = None
    started_at: float | None = None
    last_updated_at: float | None = None
    version_number: int | None = None
    execution_number: int | None = None
    job_document: dict[str, Any] | None = None
    approximate_seconds_before_timed_out: int | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "execution")
        status = _status(o, "status", ProtocolError)
        return cls(
            job_id=_job_id(o),
            status=status,
            thing_name=_str(o, "thingName", err=ProtocolError),
            status_details=_details(o, "statusDetails", ProtocolError),
            queued_at=parse_timestamp(o.get("queuedAt")),
            started_at=parse_timestamp(o.get("startedAt")),
            last_updated_at=parse_timestamp(o.get("lastUpdatedAt")),
            version_number=_counter(o, "versionNumber", 0),
            execution_number=_counter(o, "executionNumber", 1),
            job_document=_document(o),
            approximate_seconds_before_timed_out=_int(
                o, "approximateSecondsBeforeTimedOut", ProtocolError
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            jobId=self.job_id,
            thingName=self.thing_name,
            status=self.status.value,
            statusDetails=self.status_details,
            queuedAt=None if self.queued_at is None else _ts_out(self.queued_at),
            startedAt=None if self.started_at is None else _ts_out(self.started_at),
            lastUpdatedAt=None if self.last_updated_at is None else _ts_out(self.last_updated_at),
            versionNumber=self.version_number,
            executionNumber=self.execution_number,
            jobDocument=self.job_document,
            approximateSecondsBeforeTimedOut=self.approximate_seconds_before_timed_out,
        )


# -- events ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class JobExecutionsChangedEvent:
    """`notify`: the pending executions by status. Unknown status keys are skipped."""

    jobs: dict[JobExecutionStatus, tuple[JobExecutionSummary, ...]]
    timestamp: float | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "JobExecutionsChangedEvent")
        raw = o.get("jobs")
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ProtocolError("'jobs' must be an object")
        jobs: dict[JobExecutionStatus, tuple[JobExecutionSummary, ...]] = {}
        for key, summaries in raw.items():
            try:
                status = JobExecutionStatus(key)
            except ValueError:
                continue
            if not isinstance(summaries, list):
                raise ProtocolError(f"'jobs.{key}' must be a list")
            jobs[status] = tuple(JobExecutionSummary.from_json(s) for s in summaries)
        return cls(jobs=jobs, timestamp=parse_timestamp(o.get("timestamp")))

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            jobs={
                status.value: [s.to_json() for s in summaries]
                for status, summaries in self.jobs.items()
            },
            timestamp=None if self.timestamp is None else _ts_out(self.timestamp),
        )


@dataclass(frozen=True, slots=True)
class NextJobExecutionChangedEvent:
    """`notify-next`: the new head of the queue; `execution` None when the queue emptied."""

    execution: JobExecution | None = None
    timestamp: float | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "NextJobExecutionChangedEvent")
        raw = o.get("execution")
        return cls(
            execution=None if raw is None else JobExecution.from_json(raw),
            timestamp=parse_timestamp(o.get("timestamp")),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            execution=None if self.execution is None else self.execution.to_json(),
            timestamp=None if self.timestamp is None else _ts_out(self.timestamp),
        )


# -- replies -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A `/rejected` payload. `code` stays a plain string if the service invents a new one."""

    code: ErrorCode | str
    message: str = ""
    client_token: str | None = None
    timestamp: float | None = None
    execution_state: JobExecutionState | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "ErrorResponse")
        state = o.get("executionState")
        return cls(
            code=parse_error_code(_req_str(o, "code")),
            message=_str(o, "message", err=ProtocolError) or "",
            client_token=_token(o, ProtocolError),
            timestamp=parse_timestamp(o.get("timestamp")),
            execution_state=None if state is None else JobExecutionState.from_json(state),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            code=str(self.code),
            message=self.message,
            clientToken=self.client_token,
            timestamp=None if self.timestamp is None else _ts_out(self.timestamp),
            executionState=None if self.execution_state is None else self.execution_state.to_json(),
        )


@dataclass(frozen=True, slots=True)
class GetPendingReply:
    in_progress_jobs: tuple[JobExecutionSummary, ...] = ()
    queued_jobs: tuple[JobExecutionSummary, ...] = ()
    client_token: str | None = None
    timestamp: float | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "GetPendingJobExecutions reply")
        return cls(
            in_progress_jobs=_summaries(o, "inProgressJobs"),
            queued_jobs=_summaries(o, "queuedJobs"),
            client_token=_token(o, ProtocolError),
            timestamp=parse_timestamp(o.get("timestamp")),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            inProgressJobs=[s.to_json() for s in self.in_progress_jobs],
            queuedJobs=[s.to_json() for s in self.queued_jobs],
            clientToken=self.client_token,
            timestamp=None if self.timestamp is None else _ts_out(self.timestamp),
        )


def _summaries(o: Mapping[str, Any], key: str) -> tuple[JobExecutionSummary, ...]:
    value = o.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProtocolError(f"{key!r} must be a list")
    return tuple(JobExecutionSummary.from_json(item) for item in value)


@dataclass(frozen=True, slots=True)
class StartNextReply:
    """`execution` is None when nothing is pending (the accepted reply has no `execution`)."""

    execution: JobExecution | None = None
    client_token: str | None = None
    timestamp: float | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "StartNextPendingJobExecution reply")
        raw = o.get("execution")
        return cls(
            execution=None if raw is None else JobExecution.from_json(raw),
            client_token=_token(o, ProtocolError),
            timestamp=parse_timestamp(o.get("timestamp")),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            execution=None if self.execution is None else self.execution.to_json(),
            clientToken=self.client_token,
            timestamp=None if self.timestamp is None else _ts_out(self.timestamp),
        )


@dataclass(frozen=True, slots=True)
class DescribeReply:
    """`execution` None is tolerated: a describe of `$next` with nothing pending."""

    execution: JobExecution | None = None
    client_token: str | None = None
    timestamp: float | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "DescribeJobExecution reply")
        raw = o.get("execution")
        return cls(
            execution=None if raw is None else JobExecution.from_json(raw),
            client_token=_token(o, ProtocolError),
            timestamp=parse_timestamp(o.get("timestamp")),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            execution=None if self.execution is None else self.execution.to_json(),
            clientToken=self.client_token,
            timestamp=None if self.timestamp is None else _ts_out(self.timestamp),
        )


@dataclass(frozen=True, slots=True)
class UpdateReply:
    """`execution_state`/`job_document` only when the request asked for them."""

    execution_state: JobExecutionState | None = None
    job_document: dict[str, Any] | None = None
    client_token: str | None = None
    timestamp: float | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "UpdateJobExecution reply")
        state = o.get("executionState")
        return cls(
            execution_state=None if state is None else JobExecutionState.from_json(state),
            job_document=_document(o),
            client_token=_token(o, ProtocolError),
            timestamp=parse_timestamp(o.get("timestamp")),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            executionState=None if self.execution_state is None else self.execution_state.to_json(),
            jobDocument=self.job_document,
            clientToken=self.client_token,
            timestamp=None if self.timestamp is None else _ts_out(self.timestamp),
        )


# -- requests (strict: parsed by the emulator) -------------------------------------------------
def _request_details(o: Mapping[str, Any]) -> dict[str, str] | None:
    value = o.get("statusDetails")
    if value is None:
        return None
    problem = validate_status_details(value)
    if problem is not None:
        raise InvalidRequestError(f"statusDetails: {problem}")
    return StatusDetails(value)  # validated here, once: the service takes it as it is


def _step_timeout(o: Mapping[str, Any], *, allow_clear: bool) -> int | None:
    value = _int(o, "stepTimeoutInMinutes", InvalidRequestError)
    if value is None:
        return None
    problem = step_timeout_problem(value, allow_clear=allow_clear)
    if problem is not None:
        raise InvalidRequestError(f"'stepTimeoutInMinutes' {problem}")
    return value


@dataclass(frozen=True, slots=True)
class GetPendingRequest:
    client_token: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "request", InvalidRequestError)
        return cls(client_token=_token(o, InvalidRequestError))

    def to_json(self) -> dict[str, Any]:
        return _omit_none(clientToken=self.client_token)


@dataclass(frozen=True, slots=True)
class StartNextRequest:
    status_details: dict[str, str] | None = None
    step_timeout_in_minutes: int | None = None
    client_token: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "request", InvalidRequestError)
        return cls(
            status_details=_request_details(o),
            step_timeout_in_minutes=_step_timeout(o, allow_clear=False),
            client_token=_token(o, InvalidRequestError),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            statusDetails=self.status_details,
            stepTimeoutInMinutes=self.step_timeout_in_minutes,
            clientToken=self.client_token,
        )


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """`include_job_document` None means the MQTT default, which is true."""

    execution_number: int | None = None
    include_job_document: bool | None = None
    client_token: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "request", InvalidRequestError)
        return cls(
            execution_number=_int(o, "executionNumber", InvalidRequestError),
            include_job_document=_bool(o, "includeJobDocument", InvalidRequestError),
            client_token=_token(o, InvalidRequestError),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            executionNumber=self.execution_number,
            includeJobDocument=self.include_job_document,
            clientToken=self.client_token,
        )


@dataclass(frozen=True, slots=True)
class UpdateRequest:
    status: JobExecutionStatus
    status_details: dict[str, str] | None = None
    expected_version: int | None = None
    execution_number: int | None = None
    include_job_execution_state: bool | None = None
    include_job_document: bool | None = None
    step_timeout_in_minutes: int | None = None
    client_token: str | None = None

    @classmethod
    def from_json(cls, obj: object) -> Self:
        o = _object(obj, "request", InvalidRequestError)
        status = _status(o, "status", InvalidRequestError)
        return cls(
            status=status,
            status_details=_request_details(o),
            expected_version=_int(o, "expectedVersion", InvalidRequestError),
            execution_number=_int(o, "executionNumber", InvalidRequestError),
            include_job_execution_state=_bool(o, "includeJobExecutionState", InvalidRequestError),
            include_job_document=_bool(o, "includeJobDocument", InvalidRequestError),
            step_timeout_in_minutes=_step_timeout(o, allow_clear=True),
            client_token=_token(o, InvalidRequestError),
        )

    def to_json(self) -> dict[str, Any]:
        return _omit_none(
            status=self.status.value,
            statusDetails=self.status_details,
            expectedVersion=self.expected_version,
            executionNumber=self.execution_number,
            includeJobExecutionState=self.include_job_execution_state,
            includeJobDocument=self.include_job_document,
            stepTimeoutInMinutes=self.step_timeout_in_minutes,
            clientToken=self.client_token,
        )
