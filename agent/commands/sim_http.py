"""The `sim` commands' one HTTP call to the emulator's control plane (the iot REST API)."""

from __future__ import annotations

import json
import time
from typing import Any

from jobs_agent.cli import UsageError


class ApiError(Exception):
    """The emulator refused a call, or could not be reached (the message says which)."""


def call(endpoint: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One control-plane call. The fake SigV4 scope tells the emulator it is the `iot` API
    (the emulator routes by it and never checks signatures)."""
    import urllib.error  # http.client and email: not loaded by `jobs-agent run`
    import urllib.request

    if not endpoint.startswith(("http://", "https://")):
        raise UsageError(f"--endpoint must be an http(s) URL, not {endpoint!r}")
    data = None if body is None else json.dumps(body).encode("utf-8")
    date = time.strftime("%Y%m%d", time.gmtime())
    request = urllib.request.Request(  # noqa: S310  -- scheme checked above
        endpoint.rstrip("/") + path,
        data=data,
        method=method,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"AWS4-HMAC-SHA256 Credential=sim/{date}/us-east-1/iot/aws4_request",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())
            message = f"{error.get('__type')}: {error.get('message')}"
        except ValueError:
            message = str(exc)
        raise ApiError(message) from None
    except urllib.error.URLError as exc:
        raise ApiError(f"cannot reach {endpoint}: {exc.reason}") from None
    return json.loads(raw) if raw else {}
