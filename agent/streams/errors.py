"""Errors of MQTT-based file delivery, device side.

A refused request comes back on `.../rejected/{json|cbor}` with `o`, one of the codes of the
developer guide's "Handling errors" section, and `m`, a message. The exceptions say what a caller
can do: start over (`VersionMismatch`: the stream was updated, so the file may have changed),
give up (every other code: the same request gets the same answer), or wait (`StreamTimeout`:
nothing came back while the link was up).
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """`o` of a rejected answer (mqtt-based-file-delivery-in-devices.html, Handling errors)."""

    INVALID_TOPIC = "InvalidTopic"
    INVALID_JSON = "InvalidJson"
    INVALID_CBOR = "InvalidCbor"
    UNAUTHORIZED = "Unauthorized"
    INVALID_REQUEST = "InvalidRequest"
    RESOURCE_NOT_FOUND = "ResourceNotFound"
    VERSION_MISMATCH = "VersionMismatch"
    ETAG_MISMATCH = "ETagMismatch"
    BLOCK_SIZE_OUT_OF_BOUNDS = "BlockSizeOutOfBounds"
    OFFSET_OUT_OF_BOUNDS = "OffsetOutOfBounds"
    BLOCK_COUNT_LIMIT_EXCEEDED = "BlockCountLimitExceeded"
    BLOCK_BITMAP_LIMIT_EXCEEDED = "BlockBitmapLimitExceeded"


TRANSIENT_CODES = frozenset({"InternalError", "Throttling", "ThrottlingException"})
"""Not in the guide's list; a service may still answer so under load: asked again later."""


class StreamsError(Exception):
    """Base of every error raised by `jobs_agent.streams`."""


class StreamTimeout(StreamsError):
    """No answer (no new block, no description) for the allowed time while the link was up."""


class StreamProtocolError(StreamsError):
    """An answer that does not fit the documented shapes."""


class StreamLinkError(StreamsError):
    """The broker refused a subscription or a publish (usually: the IoT policy does not allow
    the streams topics of this thing)."""


class StreamRejected(StreamsError):
    """The service refused a request; `code` is an `ErrorCode` (or the code verbatim when it is
    not one the guide lists)."""

    def __init__(self, code: ErrorCode | str, message: str, stream_id: str) -> None:
        super().__init__(f"stream {stream_id}: {code}" + (f": {message}" if message else ""))
        self.code = code
        self.message = message
        self.stream_id = stream_id

    @property
    def retryable(self) -> bool:
        """Refused for now (`TRANSIENT_CODES`): the same request may be answered later."""
        return self.code in TRANSIENT_CODES


class VersionMismatch(StreamRejected):
    """The stream is no longer at the version the request named: its files may have changed,
    so what was fetched so far must be thrown away and the download started over."""


class ResourceNotFound(StreamRejected):
    """No such stream, no such file in it, or no requested block in the file."""


def rejection(code: str, message: str, stream_id: str) -> StreamRejected:
    """The exception for a rejected answer's code."""
    try:
        known: ErrorCode | str = ErrorCode(code)
    except ValueError:
        known = code
    if known is ErrorCode.VERSION_MISMATCH:
        return VersionMismatch(known, message, stream_id)
    if known is ErrorCode.RESOURCE_NOT_FOUND:
        return ResourceNotFound(known, message, stream_id)
    return StreamRejected(known, message, stream_id)
