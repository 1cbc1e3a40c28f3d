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
_PEM_END = re.compile(r"-----END [A-Z0-9 ]*PRIVATE KEY-----")
_BASE64_OR_BREAK = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \t\r\n"
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
        text = _redact_key_tails(text)
    return text


def redact_url_credentials(value: Any) -> Any:
    """`value` (any JSON) with the credentials of every URL in it removed, nothing else: how a
    job document is kept at rest. AWS delivers fresh presigned URLs with every copy of the
    document, so the stored copy never needs them."""
    if isinstance(value, str):
        return (
            _QUERY_SECRETS.sub(lambda m: f"{m.group(1)}={REDACTED}", value)
            if "=" in value
            else value
        )
    # Plain JSON's types first: `isinstance` of the `Mapping` ABC is a Python call per value.
    if isinstance(value, list):
        return [redact_url_credentials(item) for item in value]
    if isinstance(value, (dict, Mapping)):
        return {key: redact_url_credentials(item) for key, item in value.items()}
    return value


def has_url_credentials(text: str) -> bool:
    """True when `text` carries a URL credential (a presigned URL's signature, a token)."""
    return "=" in text and _QUERY_SECRETS.search(text) is not None


def _redact_key_tails(text: str) -> str:
    """Remove the end of a key whose BEGIN line was cut off: output tails keep only the last
    1024 characters, so a key printed by a handler usually arrives without its first lines (line
    breaks may already be escaped as a literal `\\n`). Scans back from each END line: linear."""
    parts: list[str] = []
    done = 0
    for match in _PEM_END.finditer(text):
        start = match.start()
        while start > done:
            if start - 2 >= done and text[start - 2] == "\\" and text[start - 1] in "nrt":
                start -= 2
            elif text[start - 1] in _BASE64_OR_BREAK:
                start -= 1
            else:
                break
        parts.append(text[done:start])
        parts.append(f"[{REDACTED} PRIVATE KEY]")
        done = match.end()
    parts.append(text[done:])
    return "".join(parts)


def redact_value(key: str, value: Any) -> Any:
    """Redact one structured value, knowing the key it is stored under."""
    if isinstance(value, str):
        if _SECRET_KEYS.search(key) and value:
            return REDACTED
        return redact_text(value)
    # Plain JSON's types first: `isinstance` of the `Mapping` ABC is a Python call per value.
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    if isinstance(value, (dict, Mapping)):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    return value


def redact_mapping(data: Mapping[str, Any]) -> dict[str, Any]:
    return {key: redact_value(key, value) for key, value in data.items()}
