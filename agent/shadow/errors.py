"""Errors of the shadow client: what a caller can do about each.

A rejected request carries the HTTP-style `code` of the service's error response document
("Device Shadow error messages"); each code the page lists has its own exception, so a caller
catches what it can act on: refresh and retry (`ShadowVersionConflict`), make the document
smaller (`ShadowTooLarge`), fix the request (`ShadowInvalidRequest`), ask the operator for the
IoT policy (`ShadowForbidden`). `ShadowThrottled` (429: more than 10 requests in flight on one
connection) and `ShadowInternalError` (500) are retried by the client within the request's
deadline and only raised when it runs out.
"""

from __future__ import annotations


class ShadowError(Exception):
    """Base of every error raised by `jobs_agent.shadow`."""


class ShadowTimeout(ShadowError):
    """No final answer within the request's deadline (link down, replies lost, throttled)."""

    def __init__(self, operation: str, seconds: float) -> None:
        super().__init__(f"shadow {operation}: no answer within {seconds:g} s")
        self.operation = operation
        self.seconds = seconds


class ShadowLinkError(ShadowError):
    """The MQTT link refused or failed an operation (the broker refused a subscription or a
    publish: usually the IoT policy). The transport's error, translated once, here."""


class ShadowRejected(ShadowError):
    """The service answered on `/rejected` (`code`, `message` as its error document says)."""

    retryable = False

    def __init__(self, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.client_token = client_token


class ShadowInvalidRequest(ShadowRejected):
    """400 (invalid JSON, state, version, client token, nesting) or 415 (not UTF-8)."""


class ShadowForbidden(ShadowRejected):
    """401 or 403: the device's IoT policy does not allow this shadow topic."""


class ShadowNotFound(ShadowRejected):
    """404: no such shadow (or thing)."""


class ShadowVersionConflict(ShadowRejected):
    """409: the request's `version` is not the shadow's; get it again and decide."""


class ShadowTooLarge(ShadowRejected):
    """413: the stored state would exceed the service's size limit (8 KB of desired and
    reported state together, the document after the merge)."""


class ShadowThrottled(ShadowRejected):
    """429: too many requests in flight on this connection."""

    retryable = True


class ShadowInternalError(ShadowRejected):
    """500: the service failed; worth another try."""

    retryable = True


_BY_CODE: dict[int, type[ShadowRejected]] = {
    400: ShadowInvalidRequest,
    401: ShadowForbidden,
    403: ShadowForbidden,
    404: ShadowNotFound,
    409: ShadowVersionConflict,
    413: ShadowTooLarge,
    415: ShadowInvalidRequest,
    429: ShadowThrottled,
    500: ShadowInternalError,
}


def rejection(code: int, message: str, client_token: str | None = None) -> ShadowRejected:
    """The typed exception for an error response document."""
    return _BY_CODE.get(code, ShadowRejected)(code, message, client_token)
