"""Scrub secrets from text before it reaches a log line or a statusDetails value.

Two kinds of secret travel through a job agent: presigned URL credentials (AWS re-signs S3 URLs
in every job document it delivers, and anyone holding the URL can fetch the object until it
expires) and private key material (a handler that `cat`s the wrong file). Redaction is applied
in one place for logs (a structlog processor) and by the engine to every outcome it reports.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "REDACTED"

_QUERY_SECRETS = re.compile(
    r"(?i)\b(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|Signature|AWSAccessKeyId"
    r"|x-amz-security-token|sig)=([^&\s\"'<>]+)"
)
_PEM_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----.*?(-----END \1-----|$)", re.DOTALL
)
_SECRET_KEYS = re.compile(
    r"(?i)(password|passwd|secret|private_?key|credential|security_token|session_token|access_token)"
)


def redact_text(text: str) -> str:
    """Remove URL signatures/credentials and PEM private keys from free text."""
    if "=" in text:
        text = _QUERY_SECRETS.sub(lambda m: f"{m.group(1)}={REDACTED}", text)
    if "PRIVATE KEY" in text:
        text = _PEM_PRIVATE_KEY.sub(f"[{REDACTED} PRIVATE KEY]", text)
    return text


def redact_value(key: str, value: Any) -> Any:
    """Redact one structured value, knowing the key it is stored under."""
    if isinstance(value, str):
        if _SECRET_KEYS.search(key) and value:
            return REDACTED
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    return value


def redact_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: redact_value(key, value) for key, value in data.items()}
