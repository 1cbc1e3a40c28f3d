"""The `iot-data` REST API's Device Shadow operations ("Device Shadow REST API", botocore's
`iot-data` model): GetThingShadow, UpdateThingShadow, DeleteThingShadow (`?name=` for a named
shadow) and ListNamedShadowsForThing, so boto3's `iot-data` client works through
`endpoint_url`. The request and response bodies are the shadow documents themselves (botocore's
`JsonDocument` blob); errors carry the error response document's `code` and `message` with the
rest-json error type botocore maps to its exception classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jobs_agent.emulator.shadows import ShadowError, ShadowService

SIGNING_NAME = "iotdata"
"""The SigV4 service name boto3 signs `iot-data` requests with (botocore metadata)."""

ERROR_SHAPES: dict[int, str] = {
    400: "InvalidRequestException",
    401: "UnauthorizedException",
    403: "ForbiddenException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictException",
    413: "RequestEntityTooLargeException",
    415: "UnsupportedDocumentEncodingException",
    429: "ThrottlingException",
    500: "InternalFailureException",
    503: "ServiceUnavailableException",
}


def error_shape(error: ShadowError) -> tuple[int, str]:
    """(HTTP status, botocore error shape) of a refused shadow request."""
    return error.code, ERROR_SHAPES.get(error.code, "InternalFailureException")


class IotDataApi:
    def __init__(self, shadows: ShadowService) -> None:
        self.shadows = shadows

    @staticmethod
    def _name(query: Mapping[str, str]) -> str | None:
        name = query.get("name")
        return name if name else None

    def get_shadow(self, query: Mapping[str, str], thing: str) -> dict[str, Any]:
        return self.shadows.get(thing, self._name(query))

    def update_shadow(self, query: Mapping[str, str], raw: bytes, thing: str) -> dict[str, Any]:
        return self.shadows.update(thing, self._name(query), raw)

    def delete_shadow(self, query: Mapping[str, str], thing: str) -> dict[str, Any]:
        return self.shadows.delete(thing, self._name(query))

    def list_named(self, query: Mapping[str, str], thing: str) -> dict[str, Any]:
        size = query.get("pageSize")
        try:
            page_size = None if size is None else int(size)
        except ValueError:
            raise ShadowError(400, "pageSize must be an integer") from None
        return self.shadows.list_named(thing, query.get("nextToken"), page_size)
