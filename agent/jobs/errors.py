"""Errors of the Jobs protocol, shared by the device side and the emulator.

The nine rejection codes are the service's vocabulary (`ErrorCode`); the exceptions say what a
caller can do about a failure: retry (`JobsRejected.retryable`), refresh its view of the
execution (`VersionMismatch`, with `execution_state`), or stop the job because the cloud ended it
(`JobsRejected.cloud_ended`). Every failure of a Jobs request is a `JobsError`, the link's
included (`LinkError`, `RequestTimeout`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs_agent.jobs.models import JobExecutionState


class ErrorCode(StrEnum):
    """The `code` of a rejected reply (AWS IoT Jobs MQTT API, `ErrorResponse`)."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_STATE_TRANSITION = "InvalidStateTransition"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    INTERNAL_ERROR = "InternalError"
    REQUEST_THROTTLED = "RequestThrottled"
    TERMINAL_STATE_REACHED = "TerminalStateReached"


RETRYABLE_CODES: frozenset[ErrorCode] = frozenset(
    {ErrorCode.REQUEST_THROTTLED, ErrorCode.INTERNAL_ERROR}
)
"""Only these are transient; retrying anything else repeats the same answer."""

CLOUD_ENDED_CODES: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.INVALID_STATE_TRANSITION,
        ErrorCode.TERMINAL_STATE_REACHED,
        ErrorCode.RESOURCE_NOT_FOUND,
    }
)
"""On a running job these mean the service ended it (cancelled, removed, timed out)."""


def parse_error_code(value: str) -> ErrorCode | str:
    """The enum member for a known code; an unknown code is kept verbatim, not refused."""
    try:
        return ErrorCode(value)
    except ValueError:
        return value


class JobsError(Exception):
    """Base of every error raised by `agent.jobs`."""


class ProtocolError(JobsError):
    """A payload from the other side does not fit the wire model (missing or mistyped field).

    The client logs and drops such a reply or event; it never crashes on one.
    """


class InvalidRequestError(ProtocolError):
    """A device request the service must refuse; `code` is the rejection to answer with.

    Raised by the request models' `from_json` (and `parse_payload`) so the emulator can answer
    `InvalidJson` (not a JSON object) or `InvalidRequest` (wrong field types or values).
    """

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class JobsRejected(JobsError):
    """The service answered a request on its `/rejected` topic."""

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        execution_state: JobExecutionState | None = None,
        client_token: str | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.execution_state = execution_state
        self.client_token = client_token

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    @property
    def cloud_ended(self) -> bool:
        return self.code in CLOUD_ENDED_CODES

    @property
    def version_mismatch(self) -> bool:
        return self.code == ErrorCode.VERSION_MISMATCH


class LinkError(JobsError):
    """The MQTT link refused or failed an operation (a broker refused a subscription or a
    publish, a topic the backend would not take). The transport's own error, translated once
    here, at the seam: nothing above the Jobs client catches a transport's exception type."""


class Abandoned(LinkError):
    """The agent stops now (a second stop): the request's answer was not waited for. Whether
    the service got it is unknown, as after a link loss; what it was for is kept for the next
    start (the start-next marker, the outbox), and a read's answer is asked again then."""


class RequestTimeout(JobsError):
    """No final answer within the request's deadline (link down, replies lost, or throttled)."""

    def __init__(self, operation: str, seconds: float) -> None:
        super().__init__(f"{operation}: no answer within {seconds:g} s")
        self.operation = operation
        self.seconds = seconds
