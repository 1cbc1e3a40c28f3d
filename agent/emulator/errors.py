"""The two ways the service refuses a request: `ServiceError` for a device (data plane, MQTT
and HTTPS, one of the Jobs error codes) and `ControlError` for an operator (control plane, an
AWS error shape name with its HTTP status from botocore's `iot` model)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs_agent.jobs.errors import ErrorCode

if TYPE_CHECKING:
    from jobs_agent.emulator.model import Execution


class ServiceError(Exception):
    """A device (data-plane) request refused with one of the Jobs error codes.

    `execution_state` is set for InvalidStateTransition and VersionMismatch, as AWS does.
    """

    def __init__(
        self, code: ErrorCode, message: str, execution_state: Execution | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.execution_state = execution_state


class RequestLost(ServiceError):
    """A device request lost on its way, injected by `lose_next`: the MQTT front end sends no
    answer at all, as when a QoS 1 message is lost with its link (the device's request times
    out). The HTTPS data plane, whose connection cannot lose it silently, answers
    InternalError."""

    def __init__(self, operation: str) -> None:
        super().__init__(ErrorCode.INTERNAL_ERROR, f"{operation}: request lost (injected)")


class ControlError(Exception):
    """A control-plane request refused; `exception` is the AWS error shape name."""

    STATUS = {
        "InvalidRequestException": 400,
        "ValidationException": 400,
        "ServiceQuotaExceededException": 402,
        "InternalServerException": 500,
        "InvalidQueryException": 400,
        "ResourceNotFoundException": 404,
        "ResourceAlreadyExistsException": 409,
        "ConflictException": 409,
        "InvalidStateTransitionException": 409,
        "VersionConflictException": 409,
        "LimitExceededException": 410,
        "ThrottlingException": 400,
        "InternalFailureException": 500,
        "ServiceUnavailableException": 503,
    }

    def __init__(self, exception: str, message: str) -> None:
        super().__init__(f"{exception}: {message}")
        self.exception = exception
        self.message = message

    @property
    def http_status(self) -> int:
        return self.STATUS.get(self.exception, 400)


def not_found(what: str) -> ControlError:
    return ControlError("ResourceNotFoundException", f"{what} not found")
